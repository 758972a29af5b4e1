"""One reconcile loop per TuningStudy: observe, decide (pure), apply, report.

The loop runs when woken (an event on the study, one of its Jobs or Pods, a report-API
completion) and at least every ``resyncSeconds``. An error while reconciling one study becomes
a condition and an Event on that study, with backoff; other studies go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Mapping
from typing import Any

import kopf
import sqlalchemy

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune import reconcile
from kubetune.apply import Target, apply_decision, now, park_trials, patch_status, post_event
from kubetune.config import OperatorConfig
from kubetune.jobs import study_label
from kubetune.ledger import STORAGE_ERRORS
from kubetune.observe import ChildIndex, observe_children, parse_body, with_log_tails
from kubetune.reconcile import AGGREGATED_REASONS, Decision, decide
from kubetune.runtime import Runtime, StudyState
from kubetune.sampling import grid_trials, sampler_unavailable
from kubetune.spec import SpecError, TuningStudySpec
from kubetune.status import ConditionSpec, build_status, last_progress

__all__ = [
    "finish_deleted_study",
    "reconcile_study",
    "run_study_loop",
    "secrets_of",
]

logger = logging.getLogger("kubetune.operator")

MAX_BACKOFF_SECONDS = 60.0


async def run_study_loop(
    rt: Runtime,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    jobs_index: ChildIndex,
    pods_index: ChildIndex,
) -> None:
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    state = rt.study(namespace, name)
    loop = asyncio.get_running_loop()
    failures, posted, failed_generation = 0, "", None
    while not stopped and not rt.closing:
        state.wake.clear()
        started = time.monotonic()
        try:
            delay = await reconcile_study(rt, body, jobs_index, pods_index)
            failures, posted = 0, ""
        except asyncio.CancelledError:
            raise
        except Exception as e:  # this study's problem: say so on it, back off, others go on
            if rt.closing:  # the executor went away under the pass: nothing to report
                return
            failures += 1
            failed_generation = body.metadata.get("generation")
            delay, posted = await _reconcile_failed(rt, body, e, failures, posted=posted)
        rt.metrics.observe_reconcile(time.monotonic() - started)
        logger.debug("Reconciled study=%s/%s next=%.2fs", namespace, name, delay)
        deadline = loop.time() + delay
        while not stopped:
            if state.wake.is_set():
                # While backing off, only a new spec cuts the wait short (our own status
                # patch, Job and Pod events would otherwise retry at once).
                if not failures or body.metadata.get("generation") != failed_generation:
                    break
                state.wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=min(remaining, 0.5))


async def reconcile_study(
    rt: Runtime, body: kopf.Body, jobs_index: ChildIndex, pods_index: ChildIndex
) -> float:
    """One pass for one study; returns the seconds until the next pass at the latest."""
    meta = body.metadata
    namespace, name, uid = str(meta.namespace), str(meta.name), str(meta.uid or "")
    state = rt.study(namespace, name)
    state.uid = uid
    spec = await _valid_spec(rt, body, state)
    if spec is None:
        return rt.config.resync_seconds
    # Jobs first, then the ledger: a Job seen Succeeded implies its report already landed.
    seen = observe_children(
        state,
        key=(namespace, study_label(name)),
        uid=uid,
        jobs_index=jobs_index,
        pods_index=pods_index,
        wait=rt.config.expectation_seconds,
    )
    try:
        study = await rt.db(rt.ledger.open, spec, namespace=namespace, name=name, uid=uid)
        snap = await rt.db(rt.ledger.snapshot, study)
    except STORAGE_ERRORS as e:
        return await _storage_down(rt, body, state, e)
    rt.metrics.storage_reachable(True)
    state.storage_backoff = 0.0
    jobs = await with_log_tails(
        rt, namespace=namespace, spec=spec, jobs=seen.jobs, snap=snap, pods_by_job=seen.pods_by_job
    )
    gone, state.gone = state.gone, set()  # a 404 read is used once; a failed pass reads again
    decision = decide(
        spec,
        meta.get("generation"),
        jobs,
        snap,
        now(),
        previous_status=dict(body.get("status") or {}),
        expected=seen.expected,
        gone=gone,
        image_pull_grace_seconds=rt.config.image_pull_grace_seconds,
        grid_trials=grid_trials(spec),
        reports_since=rt.reports_since,
    )
    target = Target(body, spec, study, state)
    try:
        changed = await apply_decision(rt, target, decision, snap)
        await patch_status(rt, body, decision.status)
        _report(rt, target, decision)
        _observe_metrics(rt, namespace, name, spec, decision, progress=last_progress(snap))
        await park_trials(rt, target, decision.park)  # asks ahead, after the launches
    except STORAGE_ERRORS as e:
        return await _storage_down(rt, body, state, e)
    if changed:
        return 0.0  # look again at once: the status should show what was just done
    if decision.requeue_after is None:
        return rt.config.resync_seconds
    return min(rt.config.resync_seconds, max(decision.requeue_after, 0.5))


def _report(rt: Runtime, t: Target, decision: Decision) -> None:
    """Post the decision's Events; per-trial ones through the bounded poster."""
    for ev in decision.events:
        if ev.reason in AGGREGATED_REASONS:  # per trial: bounded, see event_posting
            rt.announce(t.namespace, t.name, ev)
        else:
            post_event(t.body, ev.type, ev.reason, ev.message)


async def _valid_spec(rt: Runtime, body: kopf.Body, state: StudyState) -> TuningStudySpec | None:
    """The spec, or None after marking the study Invalid (bad spec, sampler unavailable)."""
    try:
        spec = parse_body(body).spec
    except SpecError as e:
        await _invalid(rt, body, state, str(e))
        return None
    unavailable = sampler_unavailable(spec, where="the operator image")
    if unavailable is not None:
        await _invalid(rt, body, state, unavailable, reason=R.SAMPLER_UNAVAILABLE)
        return None
    state.invalid_posted = None
    return spec


async def _reconcile_failed(
    rt: Runtime, body: kopf.Body, error: Exception, failures: int, *, posted: str
) -> tuple[float, str]:
    """Condition ``Reconciled=False`` (reason ReconcileError), a Warning Event when the error
    is new, and the backoff; returns (seconds to wait, the error text now announced)."""
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    secrets = secrets_of(rt.config)
    message = reconcile.describe_error(error, secrets=secrets)
    delay = reconcile.reconcile_backoff(failures)
    rt.metrics.reconcile_failed(R.RECONCILE_ERROR)
    if failures == 1:
        trace = reconcile.redact("".join(traceback.format_exception(error)), secrets)
        logger.error(
            "Reconcile failed study=%s/%s retry_in=%.0fs\n%s", namespace, name, delay, trace
        )
    else:
        logger.warning(
            "Reconcile failed again study=%s/%s failures=%d retry_in=%.0fs error=%s",
            namespace,
            name,
            failures,
            delay,
            message,
        )
    status = reconcile.reconcile_error_status(
        dict(body.get("status") or {}),
        now=now(),
        message=message,
        failures=failures,
        retry_in=delay,
    )
    with contextlib.suppress(Exception):  # the API may be what fails; the log has it all
        await patch_status(rt, body, status)
    if message != posted:
        post_event(
            body,
            "Warning",
            R.RECONCILE_ERROR,
            f"Reconcile failed: {message}; retrying with backoff",
        )
    return delay, message


def secrets_of(config: OperatorConfig) -> list[str]:
    """What must never reach a condition, an Event or a log: the storage URL, its password,
    the token key."""
    out = [config.storage_url, config.token_key.decode(errors="ignore")]
    with contextlib.suppress(Exception):
        password = sqlalchemy.engine.make_url(config.storage_url).password
        if password:
            out.append(str(password))
    return out


async def _storage_down(
    rt: Runtime, body: kopf.Body, state: StudyState, error: BaseException
) -> float:
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    rt.metrics.storage_reachable(False)
    rt.metrics.reconcile_failed("StorageUnavailable")
    # The exception text of a failed connection can hold the URL: keep only its type.
    message = f"the Optuna storage is unreachable ({type(error).__name__}); retrying"
    logger.warning(
        "Storage unreachable study=%s/%s error=%s", namespace, name, type(error).__name__
    )
    status = reconcile.storage_error_status(
        dict(body.get("status") or {}),
        generation=body.metadata.get("generation"),
        now=now(),
        message=message,
    )
    with contextlib.suppress(Exception):
        await patch_status(rt, body, status)
    state.storage_backoff = min(MAX_BACKOFF_SECONDS, max(1.0, (state.storage_backoff or 0.5) * 2))
    return state.storage_backoff


async def _invalid(
    rt: Runtime, body: kopf.Body, state: StudyState, message: str, *, reason: str = R.INVALID_SPEC
) -> None:
    prev = dict(body.get("status") or {})
    status = build_status(
        previous=prev,
        generation=body.metadata.get("generation"),
        now=now(),
        ledger=None,
        directions=(),
        max_trials=None,
        state="Invalid",
        message=message,
        conditions=[
            ConditionSpec(R.COND_READY, "False", reason, message),
            ConditionSpec(R.COND_INVALID, "True", reason, message),
        ],
        gpu_used=0.0,
        gpu_saved=0.0,
        start_time=None,
        completion_time=None,
    )
    already = prev.get("state") == "Invalid" and prev.get("message") == message
    if not already and state.invalid_posted != message:
        state.invalid_posted = message
        post_event(body, "Warning", reason, message)
        logger.warning(
            "Refused invalid study study=%s/%s: %s",
            body.metadata.namespace,
            body.metadata.name,
            message,
        )
    await patch_status(rt, body, status)


def _observe_metrics(
    rt: Runtime,
    namespace: str,
    name: str,
    spec: TuningStudySpec,
    decision: Decision,
    *,
    progress: float | None,
) -> None:
    status = decision.status
    counts = status.get("trials") or {}
    gpu = status.get("gpuSeconds") or {}
    rt.metrics.observe_study(
        namespace,
        name,
        trials={
            "COMPLETE": int(counts.get("completed", 0)),
            "PRUNED": int(counts.get("pruned", 0)),
            "FAIL": int(counts.get("failed", 0)),
            "RUNNING": int(counts.get("running", 0)),
            "RETRIED": int(counts.get("retried", 0)),
        },
        running=decision.occupied,
        parallelism=spec.budget.parallelism,
        best_values=_best_values(spec, status),
        gpu_seconds=float(gpu.get("used", 0.0)),
        gpu_seconds_saved=float(gpu.get("savedByPruning", 0.0)),
        condition=str(status.get("state") or "Pending"),
        last_progress=progress,
    )


def _best_values(spec: TuningStudySpec, status: Mapping[str, Any]) -> dict[str, float]:
    """Best value per objective: the best trial's, or per objective over the Pareto front."""
    best: dict[str, float] = {}
    bt = status.get("bestTrial")
    if isinstance(bt, Mapping) and bt.get("values"):
        best[spec.objectives[0].name] = float(bt["values"][0])
    front = status.get("paretoFront") or []
    for i, o in enumerate(spec.objectives):
        vals = [float(t["values"][i]) for t in front if len(t.get("values") or []) > i]
        if vals and len(spec.objectives) > 1:
            best[o.name] = max(vals) if o.direction == "maximize" else min(vals)
    return best


async def finish_deleted_study(rt: Runtime, body: kopf.Body, jobs_index: ChildIndex) -> None:
    """Fail the running trials (reason ``StudyDeleted``), delete the Jobs, forget the study.

    Owner references make the Jobs go anyway; deleting them here stops the pods at once. The
    Optuna study stays in the database (its history is worth keeping).
    """
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    uid = str(body.metadata.uid or "")
    study = rt.ledger.resolve(namespace, name)
    if study is None:
        # Not opened by this process yet (e.g. just restarted): open it to fail its trials.
        with contextlib.suppress(SpecError, *STORAGE_ERRORS):
            spec = parse_body(body).spec
            if await rt.db(rt.ledger.exists, namespace=namespace, name=name, uid=uid):
                study = await rt.db(rt.ledger.open, spec, namespace=namespace, name=name, uid=uid)
    if study is not None:
        try:
            failed = await rt.db(
                rt.ledger.fail_running, study, R.STUDY_DELETED, "the TuningStudy was deleted"
            )
        except STORAGE_ERRORS as e:
            raise kopf.TemporaryError(
                f"the Optuna storage is unreachable ({type(e).__name__})", delay=5
            ) from None
        logger.info(
            "Failed running trials of deleted study=%s/%s count=%d", namespace, name, failed
        )
    # A copy: the index changes under us while each delete is awaited.
    for job in list(jobs_index.get((namespace, study_label(name)), [])):
        meta = job.get("metadata") or {}
        if uid and not any(o.get("uid") == uid for o in meta.get("ownerReferences") or []):
            continue
        await asyncio.to_thread(rt.api.delete_job, namespace, str(meta.get("name")))
    rt.ledger.forget(namespace, name)
    rt.metrics.forget_study(namespace, name)
    rt.release(namespace, name)
