"""Carry out a reconcile decision: ledger writes, then Kubernetes writes, launches last.

The order matters: a result is told before the Job that produced it may go, and a new trial is
asked only after every finished one was told (the sampler then sees all results).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf
import optuna

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.jobs import job_name, render_job
from kubetune.reconcile import (
    CreateJob,
    Decision,
    DeleteJob,
    EventSpec,
    LaunchParked,
    RecordUsage,
    RelaunchAttempt,
    ReleaseParked,
    SuspendJob,
    Tell,
    VerifyJobGone,
)
from kubetune.runtime import Runtime, StudyState
from kubetune.spec import TuningStudySpec
from kubetune.status import LedgerSnapshot, TrialUsage

if TYPE_CHECKING:
    from kubetune.metrics import OperatorMetrics

__all__ = [
    "Target",
    "apply_decision",
    "count_settled_usage",
    "now",
    "park_trials",
    "patch_status",
    "post_event",
]

logger = logging.getLogger("kubetune.operator")

#: Job creates in flight at once for one study (each is one API request in a thread).
LAUNCH_CONCURRENCY = 8
#: The most seconds one pass spends asking ahead; the next pass (at once) asks the rest, so a
#: slot freed meanwhile waits for one ask at most, not for the whole refill.
PARK_SECONDS = 0.2


def now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Target:
    """The study a decision is applied to."""

    body: kopf.Body
    spec: TuningStudySpec
    study: optuna.Study
    state: StudyState

    @property
    def namespace(self) -> str:
        return str(self.body.metadata.namespace)

    @property
    def name(self) -> str:
        return str(self.body.metadata.name)


def post_event(body: kopf.Body, kind: str, reason: str, message: str) -> None:
    with contextlib.suppress(Exception):
        kopf.event(body, type=kind, reason=reason, message=message[:1000])


async def patch_status(rt: Runtime, body: kopf.Body, status: dict[str, Any]) -> None:
    """Patch the fields that changed (none: no request)."""
    current = dict(body.get("status") or {})
    changed = sorted(k for k, v in status.items() if current.get(k) != v)
    if not changed:
        return
    logger.debug("Patching status study=%s fields=%s", body.metadata.name, changed)
    await asyncio.to_thread(
        rt.api.patch_status, str(body.metadata.namespace), str(body.metadata.name), status
    )


async def apply_decision(rt: Runtime, t: Target, decision: Decision, snap: LedgerSnapshot) -> bool:
    """Apply the actions but parking (:func:`park_trials`, after the status); returns whether
    the loop should look again at once: after any action but a direct read that found its Job
    (that Job is only late in the watch)."""
    seen_free = time.monotonic()
    verified: list[bool] = []
    if decision.parked_launches:
        await _launch_parked(rt, t, decision.parked_launches, seen_free)
    usage = decision.usage
    if usage:
        await rt.db(rt.ledger.record_usage, t.study, usage)
        count_settled_usage(rt.metrics, t.namespace, t.name, usage, snap.usage)
    for a in decision.steps:
        if isinstance(a, Tell):
            await _tell(rt, t, a, snap)
        elif isinstance(a, RelaunchAttempt):
            await _relaunch(rt, t, a)
        elif isinstance(a, CreateJob):
            await create_trial_job(rt, t, a.trial, a.attempt, a.params)
            _log("Created missing Job", t, trial=a.trial, attempt=a.attempt)
        elif isinstance(a, VerifyJobGone):
            verified.append(await _verify_gone(rt, t, a))
        elif isinstance(a, ReleaseParked):
            await rt.db(rt.ledger.release, t.study, a.trial)
            _log("Released parked trial", t, trial=a.trial)
        elif isinstance(a, DeleteJob):
            await asyncio.to_thread(rt.api.delete_job, t.namespace, a.name)
            _log("Deleted Job", t, job=a.name, reason=a.reason)
        elif isinstance(a, SuspendJob):
            await asyncio.to_thread(rt.api.suspend_job, t.namespace, a.name, a.suspend)
            _log("Suspended Job" if a.suspend else "Resumed Job", t, job=a.name)
    if decision.launches:
        await _launch(rt, t, decision.launches, seen_free)
    return any(verified) or any(not isinstance(a, VerifyJobGone) for a in decision.actions)


def _log(what: str, t: Target, **fields: object) -> None:
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    logger.info("%s study=%s/%s%s", what, t.namespace, t.name, extra)


def count_settled_usage(
    metrics: OperatorMetrics,
    namespace: str,
    name: str,
    records: Iterable[RecordUsage],
    before: Mapping[int, TrialUsage],
) -> None:
    """Count the settlement just stored into the GPU counters, as the core computed it.

    A record holds the trial's absolute GPU-seconds, so it adds what it holds beyond the
    stored figure (``before``, the pass's snapshot): summed, the counter is the settled part
    of ``status.gpuSeconds.used``. A pruned trial's record carries its saving.
    """
    for r in records:
        prior = before.get(r.trial)
        added = r.gpu_seconds - (prior.gpu_seconds if prior is not None else 0.0)
        metrics.gpu_settled(
            namespace, name, gpu_seconds=max(0.0, added), saved_by_pruning=r.saved_by_pruning
        )


async def _tell(rt: Runtime, t: Target, a: Tell, snap: LedgerSnapshot) -> None:
    done = await rt.db(
        rt.ledger.tell, t.study, a.trial, a.state, a.values, reason=a.reason, message=a.message
    )
    if not done:
        return
    rec = snap.trial(a.trial)
    started = rec.datetime_start if rec is not None else None
    duration = (now() - started).total_seconds() if started else 0.0
    rt.metrics.trial_finished(t.namespace, t.name, a.state, duration_seconds=duration)
    rt.metrics.record_progress(t.namespace, t.name, time.time())
    _log("Told trial result", t, trial=a.trial, state=a.state, reason=a.reason)


async def _verify_gone(rt: Runtime, t: Target, a: VerifyJobGone) -> bool:
    """Read the Job directly: gone (404) is remembered for the next pass; found, it is
    expected again (the watch lags), so the trial is not relaunched. True when gone."""
    jname = job_name(t.name, a.trial, a.attempt)
    if not await asyncio.to_thread(rt.api.job_exists, t.namespace, jname):
        t.state.gone.add((a.trial, a.attempt))
        _log("Confirmed Job gone", t, job=jname)
        return True
    t.state.seen.pop(jname, None)
    t.state.expected[jname] = (a.trial, a.attempt, time.monotonic())
    _log("Job exists, the watch lags", t, job=jname)
    return False


async def _relaunch(rt: Runtime, t: Target, a: RelaunchAttempt) -> None:
    await rt.db(rt.ledger.set_attempt, t.study, a.trial, a.attempt)
    await create_trial_job(rt, t, a.trial, a.attempt, a.params)
    rt.metrics.trial_retried(t.namespace, t.name)
    rt.metrics.record_progress(t.namespace, t.name, time.time())
    _log("Relaunched trial", t, trial=a.trial, attempt=a.attempt, reason=a.reason)


async def _launched(
    rt: Runtime, t: Target, number: int, params: Mapping[str, Any], seen_free: float
) -> None:
    """Create a new trial's Job (attempt 0) and announce it."""
    await create_trial_job(rt, t, number, 0, params)
    rt.metrics.job_launched(time.monotonic() - seen_free)
    launched = EventSpec("Normal", R.TRIAL_LAUNCHED, f"Trial {number} launched with {params}")
    rt.announce(t.namespace, t.name, launched)
    rt.metrics.record_progress(t.namespace, t.name, time.time())
    _log("Launched trial", t, trial=number)


async def _launch_parked(
    rt: Runtime, t: Target, launches: Iterable[LaunchParked], seen_free: float
) -> None:
    """Create the parked trials' Jobs, a few at once: nothing is asked on this path."""
    gate = asyncio.Semaphore(LAUNCH_CONCURRENCY)

    async def one(a: LaunchParked) -> None:
        async with gate:
            await _launched(rt, t, a.trial, a.params, seen_free)

    results = await asyncio.gather(*(one(a) for a in launches), return_exceptions=True)
    _raise_first(results)


def _raise_first(results: Iterable[object]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _launch(rt: Runtime, t: Target, count: int, seen_free: float) -> None:
    """Ask one trial after another (asks are CPU under the GIL, and a sampler is not meant
    for concurrent asks), and create each trial's Job while the next is asked: the k-th free
    slot waits for k asks and one create, not for k asks, creates and marks in a row."""
    gate = asyncio.Semaphore(LAUNCH_CONCURRENCY)

    async def create(number: int, params: dict[str, Any]) -> None:
        async with gate:
            await _launched(rt, t, number, params, seen_free)

    creates: list[asyncio.Task[None]] = []
    try:
        for _ in range(count):
            asked = time.monotonic()
            number, params = await rt.db(rt.ledger.ask, t.study, t.spec)
            rt.metrics.observe_ask(time.monotonic() - asked)
            creates.append(asyncio.create_task(create(number, params)))
    finally:
        # Every asked trial's create runs to its end, even when a later ask failed.
        results = await asyncio.gather(*creates, return_exceptions=True)
    _raise_first(results)


async def park_trials(rt: Runtime, t: Target, count: int) -> None:
    """Ask up to ``count`` trials ahead and park them (``kubetune.reconcile._ahead``), for at
    most :data:`PARK_SECONDS`; run after the pass's launches and status."""
    start = time.monotonic()
    for _ in range(count):
        asked = time.monotonic()
        number, _params = await rt.db(rt.ledger.ask, t.study, t.spec, park=True)
        rt.metrics.observe_ask(time.monotonic() - asked)
        _log("Parked trial", t, trial=number)
        if time.monotonic() - start >= PARK_SECONDS:
            return


async def create_trial_job(
    rt: Runtime, t: Target, trial: int, attempt: int, params: Mapping[str, Any]
) -> None:
    """Create the trial's Job; a Job the API server refuses for good fails the trial."""
    token = None
    if t.spec.trial.result.from_ == "Reporter":
        token = rt.signer.issue(t.namespace, t.name, trial, attempt)
    manifest = render_job(
        {"name": t.name, "namespace": t.namespace, "uid": t.body.metadata.uid},
        t.spec,
        trial,
        attempt,
        params,
        report_url=rt.report_url,
        token=token,
        optuna_study_name=t.study.study_name,
    )
    refused = await asyncio.to_thread(rt.api.create_job, t.namespace, manifest)
    jname = job_name(t.name, trial, attempt)
    if refused is not None:
        # The trial cannot run as specified: fail it instead of retrying forever.
        await rt.db(
            rt.ledger.tell, t.study, trial, "FAIL", None, reason=R.JOB_REJECTED, message=refused
        )
        rt.announce(
            t.namespace, t.name, EventSpec("Warning", R.JOB_REJECTED, f"Trial {trial}: {refused}")
        )
        logger.warning(
            "Refused Job study=%s/%s job=%s: %s",
            t.namespace,
            t.name,
            jname,
            refused.splitlines()[0],
        )
        return
    if jname not in t.state.seen:
        t.state.expected[jname] = (trial, attempt, time.monotonic())
    await rt.db(rt.ledger.mark_job_created, t.study, trial, attempt)
