"""The kopf shell: observe, call the pure reconcile, apply its actions, report.

One reconcile loop per TuningStudy (a ``@kopf.daemon``): it runs when woken by an event on the
study, on one of its Jobs or Pods, or on a report-API completion, and at least every
``resyncSeconds``. Child Jobs and Pods come from ``@kopf.index`` (kopf fills the indexes before
any handler runs, so a restarted operator sees every existing Job on its first pass).

Everything durable is in the Optuna ledger; in memory there are only caches and the names of
Jobs created but not yet seen in the index (so that a fresh create is not mistaken for a
deleted Job). Ledger calls block: they run on one small executor sized to the connection pool.

Configuration comes from ``memo.config`` (set by :func:`kubetune.operator_main.run_operator`)
or, when kopf is started directly (``kopf run -m kubetune.handlers``, as the tests do), from
the environment: ``KUBETUNE_STORAGE_URL``, ``KUBETUNE_TOKEN_KEY``, ``KUBETUNE_REPORT_URL``,
``KUBETUNE_METRICS_PORT`` / ``KUBETUNE_REPORT_PORT`` (0 picks a free port, -1 disables),
``KUBETUNE_RESYNC_SECONDS``, ``KUBETUNE_IMAGE_PULL_GRACE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
import optuna
import sqlalchemy.exc
from aiohttp import web
from prometheus_client import CollectorRegistry

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.jobs import (
    LABEL_STUDY,
    ObservedJob,
    job_name,
    observe_job,
    render_job,
    study_label,
)
from kubetune.ledger import Ledger, make_storage
from kubetune.metrics import OperatorMetrics, metrics_app
from kubetune.reconcile import (
    CreateJob,
    Decision,
    DeleteJob,
    ExpectedJob,
    LaunchTrials,
    RecordUsage,
    RelaunchAttempt,
    SuspendJob,
    Tell,
    decide,
    describe_error,
    reconcile_backoff,
    reconcile_error_status,
    redact,
    storage_error_status,
)
from kubetune.reporting import create_report_app
from kubetune.sampling import grid_trials, sampler_unavailable
from kubetune.spec import GROUP, PLURAL, VERSION, SpecError, TuningStudySpec, parse_manifest
from kubetune.status import ConditionSpec, build_status
from kubetune.tokens import TokenSigner

__all__ = ["STORAGE_ERRORS", "KubeApi", "OperatorConfig", "Runtime"]

logger = logging.getLogger("kubetune.operator")
T = TypeVar("T")
JobsIndex = kopf.Index[tuple[str, str], dict[str, Any]]

STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.SQLAlchemyError,
    OSError,
)
#: How long a created Job may stay unseen in the index before it counts as missing.
EXPECTATION_SECONDS = 60.0
#: After a start, the report API answers 503 (retry) rather than 404 for a study it has not
#: opened yet: kopf has not listed the TuningStudies so far, and trainers must not give up.
STARTUP_GRACE_SECONDS = 30.0
LOG_TAIL_LINES = 30
MAX_BACKOFF_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    storage_url: str
    token_key: bytes
    report_url: str | None = None
    metrics_port: int = 8080
    report_port: int = 8082
    resync_seconds: float = 10.0
    image_pull_grace_seconds: float = 300.0
    pool_size: int = 4
    max_overflow: int = 4

    def __repr__(self) -> str:  # never print the storage URL (password) or the key
        return (
            f"OperatorConfig(report_url={self.report_url!r}, metrics_port={self.metrics_port}, "
            f"report_port={self.report_port}, resync_seconds={self.resync_seconds})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        url = env.get("KUBETUNE_STORAGE_URL", "")
        key = env.get("KUBETUNE_TOKEN_KEY", "")
        if not url:
            raise kopf.PermanentError("KUBETUNE_STORAGE_URL is not set (the Optuna storage URL)")
        if len(key.encode()) < 16:
            raise kopf.PermanentError("KUBETUNE_TOKEN_KEY must be set to at least 16 bytes")
        return cls(
            storage_url=url,
            token_key=key.encode(),
            report_url=env.get("KUBETUNE_REPORT_URL") or None,
            metrics_port=int(env.get("KUBETUNE_METRICS_PORT", "8080")),
            report_port=int(env.get("KUBETUNE_REPORT_PORT", "8082")),
            resync_seconds=float(env.get("KUBETUNE_RESYNC_SECONDS", "10")),
            image_pull_grace_seconds=float(env.get("KUBETUNE_IMAGE_PULL_GRACE_SECONDS", "300")),
        )


class KubeApi:
    """The few Kubernetes calls the shell makes (blocking; run them in threads)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._client = api_client
        self._batch = kubernetes.client.BatchV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._exc = kubernetes.client.exceptions.ApiException

    @classmethod
    def from_environment(cls) -> KubeApi:
        import kubernetes

        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            return cls(kubernetes.client.ApiClient(cfg))
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG")
        )
        return cls(client)

    def create_job(self, namespace: str, body: dict[str, Any]) -> str | None:
        """Create the Job; None if it now exists (409 Conflict means it already did).

        Returns the API server's message when it refuses the Job for good (400, 403, 404, 422):
        retrying the same manifest would fail the same way. Other errors raise.
        """
        try:
            self._batch.create_namespaced_job(namespace, body)  # type: ignore[arg-type]
        except self._exc as e:
            if e.status == 409:
                return None
            if e.status in (400, 403, 404, 422):
                return f"the API server refused the Job ({e.status} {e.reason}): {e.body}"[:2000]
            raise
        return None

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except self._exc as e:
            if e.status != 404:
                raise

    def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        try:
            self._batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})
        except self._exc as e:
            if e.status != 404:  # gone meanwhile: nothing to suspend or resume
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except self._exc as e:
            if e.status != 404:  # deleted meanwhile
                raise

    def pod_log_tail(self, namespace: str, pod: str, container: str | None) -> str | None:
        try:
            text = self._core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=LOG_TAIL_LINES
            )
        except Exception:
            return None
        return text if isinstance(text, str) else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


@dataclasses.dataclass
class Runtime:
    """Per-process state: one ledger, one executor, metrics, servers, wake-up events."""

    config: OperatorConfig
    ledger: Ledger
    signer: TokenSigner
    metrics: OperatorMetrics
    registry: CollectorRegistry
    api: KubeApi
    executor: concurrent.futures.ThreadPoolExecutor
    report_url: str | None = None
    wakeups: dict[tuple[str, str], asyncio.Event] = dataclasses.field(default_factory=dict)
    #: (namespace, Job name) -> (study label, trial, attempt, monotonic time created).
    expected: dict[tuple[str, str], tuple[str, int, int, float]] = dataclasses.field(
        default_factory=dict
    )
    #: (namespace, Job name) -> monotonic time kopf last delivered an event for that Job.
    seen: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    backoff: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    runners: list[web.AppRunner] = dataclasses.field(default_factory=list)
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    #: TuningStudies (namespace, name) kopf told us about and not deleted since.
    known: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    #: (namespace, name) -> GPUs per trial pod, from the last reconciled spec.
    gpus: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.monotonic)
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    #: (namespace, name) -> the last InvalidSpec message posted as an Event. The body's status
    #: can lag our own patch by one watch event, so it alone would post the Event twice.
    invalid_posted: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)

    def wakeup(self, namespace: str, label: str) -> asyncio.Event:
        return self.wakeups.setdefault((namespace, label), asyncio.Event())

    def wake(self, namespace: str | None, label: str | None) -> None:
        if namespace and label:
            event = self.wakeups.get((namespace, label))
            if event is not None:
                event.set()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))


def _runtime(memo: Any) -> Runtime:
    rt = getattr(memo, "runtime", None)
    if not isinstance(rt, Runtime):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return rt


# ---------------------------------------------------------------------------------------------
# Startup and cleanup


async def _serve(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)


@kopf.on.startup()
async def startup(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    memo: Any = kwargs["memo"]
    config = getattr(memo, "config", None)
    if not isinstance(config, OperatorConfig):
        config = OperatorConfig.from_env()
    settings.posting.loggers = False  # Events are posted explicitly, with CamelCase reasons
    settings.persistence.finalizer = "kubetune.io/finalizer"
    # Level-based handlers need no diff of the spec; kopf's default diff base copies the whole
    # spec into an annotation, and a large spec overflows the apiserver's 256 KiB limit on
    # annotations (then kopf can neither add nor remove the finalizer: the study is stuck).
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        ignored_fields=["spec"]
    )
    registry = getattr(memo, "registry", None)
    if not isinstance(registry, CollectorRegistry):
        registry = CollectorRegistry()
    storage = make_storage(
        config.storage_url, pool_size=config.pool_size, max_overflow=config.max_overflow
    )
    rt = Runtime(
        config=config,
        ledger=Ledger(storage),
        signer=TokenSigner(config.token_key),
        metrics=OperatorMetrics(registry),
        registry=registry,
        api=KubeApi.from_environment(),
        executor=concurrent.futures.ThreadPoolExecutor(
            max_workers=config.pool_size + config.max_overflow, thread_name_prefix="ledger"
        ),
        report_url=config.report_url,
    )
    if config.metrics_port >= 0:
        runner, port = await _serve(metrics_app(registry), config.metrics_port)
        rt.runners.append(runner)
        rt.ports["metrics"] = port
    if config.report_port >= 0:
        app = create_report_app(
            functools.partial(_resolve, rt),
            rt.signer,
            executor=rt.executor,
            on_event=functools.partial(_on_report_event, rt),
        )
        runner, port = await _serve(app, config.report_port)
        rt.runners.append(runner)
        rt.ports["report"] = port
        if rt.report_url is None:
            rt.report_url = f"http://127.0.0.1:{port}"
    memo.runtime = rt
    logger.info("Started kubetune operator config=%r ports=%s", config, rt.ports)


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if not isinstance(rt, Runtime):
        return
    for runner in rt.runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    rt.executor.shutdown(wait=False, cancel_futures=True)
    rt.api.close()
    logger.info("Stopped kubetune operator")


def _resolve(rt: Runtime, namespace: str, name: str) -> optuna.Study | None:
    """The report API's resolver: the opened study, else "retry later" while it may open.

    A restarted operator opens each study on its first reconcile; until then a trainer's
    report must be retried (503), not refused (404), or the SDK would give up on the trial.
    """
    study = rt.ledger.resolve(namespace, name)
    if study is None and (
        (namespace, name) in rt.known or time.monotonic() - rt.started < STARTUP_GRACE_SECONDS
    ):
        raise optuna.exceptions.StorageInternalError(
            f"study {namespace}/{name} is not opened yet by this operator"
        )
    return study


def _on_report_event(
    rt: Runtime, kind: str, namespace: str, study: str, number: int | None, **fields: Any
) -> None:
    """Report API hook: count requests, and wake the study when a trial finished."""
    if kind == "request":
        rt.metrics.report_request(str(fields.get("action", "")), int(fields.get("code", 0)))
    elif kind == "trial_finished":
        state = str(fields.get("state", ""))
        if number is None:
            rt.metrics.trial_finished(namespace, study, state, duration_seconds=0.0)
        else:
            # The duration and GPU-seconds come from the ledger (blocking): count off the loop.
            task = asyncio.get_running_loop().create_task(
                _count_reported_finish(rt, namespace, study, number, state)
            )
            rt.tasks.add(task)
            task.add_done_callback(rt.tasks.discard)
        rt.metrics.record_progress(namespace, study, time.time())
        rt.wake(namespace, study_label(study))


def _reported_usage(study: optuna.Study, number: int, gpus: float) -> tuple[float, float, float]:
    """(duration, GPU-seconds, GPU-seconds saved) of a trial the report API just finished.

    Duration is ``datetime_complete - datetime_start`` (all attempts); GPU-seconds are that
    times the pod's GPUs (its Job has not ended yet, so Job times are not known); a pruned
    trial saved what a mean COMPLETE trial took beyond it.
    """
    durations: dict[int, float] = {}
    states: dict[int, optuna.trial.TrialState] = {}
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start is not None and t.datetime_complete is not None:
            durations[t.number] = max(0.0, (t.datetime_complete - t.datetime_start).total_seconds())
        states[t.number] = t.state
    duration = durations.get(number, 0.0)
    used = duration * gpus
    saved = 0.0
    if states.get(number) == optuna.trial.TrialState.PRUNED:
        full = [d for n, d in durations.items() if states[n] == optuna.trial.TrialState.COMPLETE]
        if full:
            saved = max(0.0, sum(full) / len(full) * gpus - used)
    return duration, used, saved


async def _count_reported_finish(
    rt: Runtime, namespace: str, name: str, number: int, state: str
) -> None:
    duration = used = saved = 0.0
    study = rt.ledger.resolve(namespace, name)
    if study is not None:
        try:
            duration, used, saved = await rt.db(
                _reported_usage, study, number, rt.gpus.get((namespace, name), 0.0)
            )
        except Exception as e:  # a metric must not break anything: count it without times
            logger.warning(
                "Could not read trial times study=%s/%s trial=%d error=%s",
                namespace,
                name,
                number,
                type(e).__name__,
            )
    rt.metrics.trial_finished(
        namespace,
        name,
        state,
        duration_seconds=duration,
        gpu_seconds=used,
        gpu_seconds_saved=saved,
    )


# ---------------------------------------------------------------------------------------------
# Indexes and wake-ups


_INDEXED_META = (
    "name",
    "namespace",
    "uid",
    "labels",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)


def _slim(body: Any, spec_keys: tuple[str, ...]) -> dict[str, Any]:
    """What the reconcile reads of a Job or Pod, and no more: the indexes hold one entry per
    Job and Pod of every study, and whole bodies (pod templates with every parameter) made
    memory grow ~22 KiB per object (benchmarks/README.md, scale)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {
        "metadata": {k: meta[k] for k in _INDEXED_META if k in meta},
        "spec": {k: spec[k] for k in spec_keys if k in spec},
        "status": body.get("status") or {},
    }


@kopf.index("batch", "v1", "jobs", labels={LABEL_STUDY: kopf.PRESENT})
async def trial_jobs(**kwargs: Any) -> Any:
    slim = _slim(kwargs["body"], ("suspend", "podFailurePolicy"))
    return {(kwargs["namespace"], kwargs["labels"][LABEL_STUDY]): slim}


@kopf.index("", "v1", "pods", labels={LABEL_STUDY: kopf.PRESENT})
async def trial_pods(**kwargs: Any) -> Any:
    return {(kwargs["namespace"], kwargs["labels"][LABEL_STUDY]): _slim(kwargs["body"], ())}


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_STUDY: kopf.PRESENT})
async def job_event(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if isinstance(rt, Runtime):
        # kopf indexes an event before it calls on.event handlers: from now on the index knows
        # this Job (or knows it is gone), so a placeholder for it is no longer needed.
        rt.seen[(kwargs["namespace"], kwargs["name"])] = time.monotonic()
        rt.wake(kwargs["namespace"], kwargs["labels"].get(LABEL_STUDY))


@kopf.on.event("", "v1", "pods", labels={LABEL_STUDY: kopf.PRESENT})
async def pod_event(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if isinstance(rt, Runtime):
        rt.wake(kwargs["namespace"], kwargs["labels"].get(LABEL_STUDY))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def study_event(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if isinstance(rt, Runtime):
        key = (str(kwargs["namespace"]), str(kwargs["name"]))
        if (kwargs.get("type") or "") == "DELETED":
            rt.known.discard(key)
        else:
            rt.known.add(key)
        rt.wake(kwargs["namespace"], study_label(str(kwargs["name"])))


# ---------------------------------------------------------------------------------------------
# The reconcile loop


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def study_daemon(**kwargs: Any) -> None:
    body: kopf.Body = kwargs["body"]
    stopped: kopf.DaemonStopped = kwargs["stopped"]
    trial_jobs: JobsIndex = kwargs["trial_jobs"]
    trial_pods: JobsIndex = kwargs["trial_pods"]
    rt = _runtime(kwargs["memo"])
    namespace = str(body.metadata.namespace)
    name = str(body.metadata.name)
    wake = rt.wakeup(namespace, study_label(name))
    loop = asyncio.get_running_loop()
    failures, posted, failed_generation = 0, "", None
    while not stopped:
        wake.clear()
        started = time.monotonic()
        try:
            delay = await reconcile_study(rt, body, trial_jobs, trial_pods)
            failures, posted = 0, ""
        except asyncio.CancelledError:
            raise
        except Exception as e:  # this study's problem: say so on it, back off, others go on
            failures += 1
            failed_generation = body.metadata.get("generation")
            delay, posted = await _reconcile_failed(rt, body, e, failures, posted=posted)
        rt.metrics.observe_reconcile(time.monotonic() - started)
        logger.debug("Reconciled study=%s/%s next=%.2fs", namespace, name, delay)
        deadline = loop.time() + delay
        while not stopped:
            if wake.is_set():
                # While backing off, only a new spec cuts the wait short (our own status
                # patch, Job and Pod events would otherwise retry at once).
                if not failures or body.metadata.get("generation") != failed_generation:
                    break
                wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(remaining, 0.5))


async def _reconcile_failed(
    rt: Runtime, body: kopf.Body, error: Exception, failures: int, *, posted: str
) -> tuple[float, str]:
    """Condition ``Reconciled=False`` (reason ReconcileError), a Warning Event when the error
    is new, and the backoff; returns (seconds to wait, the error text now announced)."""
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    secrets = _secrets(rt.config)
    message = describe_error(error, secrets=secrets)
    delay = reconcile_backoff(failures)
    rt.metrics.reconcile_failed(R.RECONCILE_ERROR)
    if failures == 1:
        trace = redact("".join(traceback.format_exception(error)), secrets)
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
    status = reconcile_error_status(
        dict(body.get("status") or {}),
        now=_now(),
        message=message,
        failures=failures,
        retry_in=delay,
    )
    with contextlib.suppress(Exception):  # the API may be what fails; the log has it all
        await _patch_status(rt, body, status)
    if message != posted:
        _post(
            body,
            "Warning",
            R.RECONCILE_ERROR,
            f"Reconcile failed: {message}; retrying with backoff",
        )
    return delay, message


def _secrets(config: OperatorConfig) -> list[str]:
    """What must never reach a condition, an Event or a log: the storage URL, its password,
    the token key."""
    out = [config.storage_url, config.token_key.decode(errors="ignore")]
    with contextlib.suppress(Exception):
        password = sqlalchemy.engine.make_url(config.storage_url).password
        if password:
            out.append(str(password))
    return out


def _now() -> datetime:
    return datetime.now(UTC)


async def _patch_status(rt: Runtime, body: kopf.Body, status: dict[str, Any]) -> None:
    current = dict(body.get("status") or {})
    changed = sorted(k for k, v in status.items() if current.get(k) != v)
    if not changed:
        return
    logger.debug("Patching status study=%s fields=%s", body.metadata.name, changed)
    await asyncio.to_thread(
        rt.api.patch_status, str(body.metadata.namespace), str(body.metadata.name), status
    )


def _post(body: kopf.Body, kind: str, reason: str, message: str) -> None:
    with contextlib.suppress(Exception):
        kopf.event(body, type=kind, reason=reason, message=message[:1000])


async def _invalid(
    rt: Runtime, body: kopf.Body, message: str, *, reason: str = R.INVALID_SPEC
) -> None:
    prev = dict(body.get("status") or {})
    generation = body.metadata.get("generation")
    now = _now()
    status = build_status(
        previous=prev,
        generation=generation,
        now=now,
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
    key = (str(body.metadata.namespace), str(body.metadata.name))
    already = prev.get("state") == "Invalid" and prev.get("message") == message
    if not already and rt.invalid_posted.get(key) != message:
        rt.invalid_posted[key] = message
        _post(body, "Warning", reason, message)
        logger.warning(
            "Refused invalid study study=%s/%s: %s",
            body.metadata.namespace,
            body.metadata.name,
            message,
        )
    await _patch_status(rt, body, status)


def _raw_spec(body: Mapping[str, Any]) -> Any:
    """The spec as the model should see it: a mapping as a plain dict, anything else as is
    (a non-object spec, possible where no schema guards the API, must become a clear
    validation error, not a crash of the reconcile)."""
    spec = body.get("spec")
    if spec is None:
        return {}
    return dict(spec) if isinstance(spec, Mapping) else spec


def _observe(
    rt: Runtime,
    *,
    namespace: str,
    uid: str,
    label: str,
    jobs_index: JobsIndex,
    pods_index: JobsIndex,
) -> tuple[list[ObservedJob], list[ExpectedJob], dict[str, dict[str, Any]]]:
    """The study's Jobs from the index (only those it owns), and the Jobs created but unseen."""
    key = (namespace, label)
    pods = list(pods_index.get(key, []))
    observed: list[ObservedJob] = []
    seen: set[str] = set()
    for job in jobs_index.get(key, []):
        owners = (job.get("metadata") or {}).get("ownerReferences") or []
        if uid and not any(o.get("uid") == uid for o in owners):
            continue  # a Job of an earlier TuningStudy with the same name
        o = observe_job(job, pods)
        if o is not None:
            observed.append(o)
            seen.add(o.name)
    expected: list[ExpectedJob] = []
    now = time.monotonic()
    for key, when in list(rt.seen.items()):
        if now - when > EXPECTATION_SECONDS:
            rt.seen.pop(key, None)
    for (ns, jname), (owner, trial, attempt, created) in list(rt.expected.items()):
        if ns != namespace or owner != label:
            continue
        if jname in seen or (ns, jname) in rt.seen or now - created > EXPECTATION_SECONDS:
            rt.expected.pop((ns, jname), None)
        else:
            expected.append(ExpectedJob(jname, trial, attempt))
    pods_by_job: dict[str, dict[str, Any]] = {}
    for p in pods:
        jn = ((p.get("metadata") or {}).get("labels") or {}).get("job-name")
        if isinstance(jn, str):
            pods_by_job[jn] = p
    return observed, expected, pods_by_job


async def reconcile_study(
    rt: Runtime,
    body: kopf.Body,
    jobs_index: JobsIndex,
    pods_index: JobsIndex,
) -> float:
    """One pass for one study; returns the seconds until the next pass at the latest."""
    meta = body.metadata
    namespace, name = str(meta.namespace), str(meta.name)
    uid = str(meta.uid or "")
    generation = meta.get("generation")
    label = study_label(name)
    key = (namespace, name)
    try:
        ts = parse_manifest(
            {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": {"name": name, "namespace": namespace},
                "spec": _raw_spec(body),
            }
        )
    except SpecError as e:
        await _invalid(rt, body, str(e))
        return rt.config.resync_seconds
    unavailable = sampler_unavailable(ts.spec, where="the operator image")
    if unavailable is not None:
        await _invalid(rt, body, unavailable, reason=R.SAMPLER_UNAVAILABLE)
        return rt.config.resync_seconds
    rt.invalid_posted.pop(key, None)
    spec = ts.spec
    rt.gpus[key] = spec.trial.gpus()

    # Jobs first, then the ledger: a Job seen Succeeded implies its report already landed.
    jobs, expected, pods_by_job = _observe(
        rt, namespace=namespace, uid=uid, label=label, jobs_index=jobs_index, pods_index=pods_index
    )
    try:
        study = await rt.db(rt.ledger.open, spec, namespace=namespace, name=name, uid=uid)
        snap = await rt.db(rt.ledger.snapshot, study)
    except STORAGE_ERRORS as e:
        return await _storage_down(rt, body, key, e)
    rt.metrics.storage_reachable(True)
    rt.backoff.pop(key, None)

    logger.debug(
        "Observed study=%s/%s jobs=%s trials=%s",
        namespace,
        name,
        [(j.name, j.phase) for j in jobs][:20],
        len(snap.trials),
    )
    jobs = await _with_log_tails(
        rt, namespace=namespace, spec=spec, jobs=jobs, snap=snap, pods_by_job=pods_by_job
    )
    now = _now()
    decision = decide(
        spec,
        generation,
        jobs,
        snap,
        now,
        previous_status=dict(body.get("status") or {}),
        expected=expected,
        image_pull_grace_seconds=rt.config.image_pull_grace_seconds,
        grid_trials=grid_trials(spec),
    )
    try:
        changed = await _apply(rt, body=body, spec=spec, study=study, decision=decision, snap=snap)
    except STORAGE_ERRORS as e:
        return await _storage_down(rt, body, key, e)
    await _patch_status(rt, body, decision.status)
    for ev in decision.events:
        _post(body, ev.type, ev.reason, ev.message)
    _observe_metrics(rt, namespace, name, spec, decision)
    if changed:
        return 0.0  # look again at once: the status should show what was just done
    delay = rt.config.resync_seconds
    if decision.requeue_after is not None:
        delay = min(delay, max(decision.requeue_after, 0.5))
    return delay


async def _storage_down(
    rt: Runtime, body: kopf.Body, key: tuple[str, str], error: BaseException
) -> float:
    rt.metrics.storage_reachable(False)
    rt.metrics.reconcile_failed("StorageUnavailable")
    # The exception text of a failed connection can hold the URL: keep only its type.
    message = f"the Optuna storage is unreachable ({type(error).__name__}); retrying"
    logger.warning("Storage unreachable study=%s/%s error=%s", *key, type(error).__name__)
    status = storage_error_status(
        dict(body.get("status") or {}),
        generation=body.metadata.get("generation"),
        now=_now(),
        message=message,
    )
    with contextlib.suppress(Exception):
        await _patch_status(rt, body, status)
    delay = min(MAX_BACKOFF_SECONDS, max(1.0, rt.backoff.get(key, 0.5) * 2))
    rt.backoff[key] = delay
    return delay


async def _with_log_tails(
    rt: Runtime,
    *,
    namespace: str,
    spec: TuningStudySpec,
    jobs: list[ObservedJob],
    snap: Any,
    pods_by_job: Mapping[str, Mapping[str, Any]],
) -> list[ObservedJob]:
    """Fetch the log tail of Jobs whose failure is about to be told (user errors only)."""
    out = []
    container = spec.trial.trainer_container().get("name")
    for j in jobs:
        rec = snap.trial(j.trial)
        if (
            j.phase == "Failed"
            and j.failure == "UserError"
            and rec is not None
            and rec.state == "RUNNING"
            and rec.attempt == j.attempt
        ):
            pod = pods_by_job.get(j.name)
            pod_name = ((pod or {}).get("metadata") or {}).get("name")
            if pod_name:
                tail = await asyncio.to_thread(rt.api.pod_log_tail, namespace, pod_name, container)
                out.append(dataclasses.replace(j, log_tail=tail))
                continue
        out.append(j)
    return out


async def _create(
    rt: Runtime,
    *,
    body: kopf.Body,
    spec: TuningStudySpec,
    study: optuna.Study,
    trial: int,
    attempt: int,
    params: Mapping[str, Any],
) -> None:
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    token = None
    if spec.trial.result.from_ == "Reporter":
        token = rt.signer.issue(namespace, name, trial, attempt)
    manifest = render_job(
        {"name": name, "namespace": namespace, "uid": body.metadata.uid},
        spec,
        trial,
        attempt,
        params,
        report_url=rt.report_url,
        token=token,
        optuna_study_name=study.study_name,
    )
    refused = await asyncio.to_thread(rt.api.create_job, namespace, manifest)
    jname = job_name(name, trial, attempt)
    if refused is not None:
        # The trial cannot run as specified: fail it instead of retrying forever.
        await rt.db(
            rt.ledger.tell, study, trial, "FAIL", None, reason=R.JOB_REJECTED, message=refused
        )
        _post(body, "Warning", R.JOB_REJECTED, f"Trial {trial}: {refused}")
        logger.warning(
            "Refused Job study=%s/%s job=%s: %s", namespace, name, jname, refused.splitlines()[0]
        )
        return
    if (namespace, jname) not in rt.seen:
        rt.expected[(namespace, jname)] = (study_label(name), trial, attempt, time.monotonic())
    await rt.db(rt.ledger.mark_job_created, study, trial, attempt)


async def _apply(
    rt: Runtime,
    *,
    body: kopf.Body,
    spec: TuningStudySpec,
    study: optuna.Study,
    decision: Decision,
    snap: Any,
) -> bool:
    """Apply the actions; ledger writes before Kubernetes writes, launches last."""
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    seen_free = time.monotonic()
    usage = [a for a in decision.actions if isinstance(a, RecordUsage)]
    if usage:
        await rt.db(rt.ledger.record_usage, study, usage)
    for a in decision.actions:
        if isinstance(a, Tell):
            done = await rt.db(
                rt.ledger.tell,
                study,
                a.trial,
                a.state,
                a.values,
                reason=a.reason,
                message=a.message,
            )
            if done:
                rec = snap.trial(a.trial)
                started = rec.datetime_start if rec is not None else None
                duration = (_now() - started).total_seconds() if started else 0.0
                settled = [u.gpu_seconds for u in usage if u.trial == a.trial]
                prior = snap.usage.get(a.trial)
                gpu = settled[-1] if settled else (prior.gpu_seconds if prior else 0.0)
                rt.metrics.trial_finished(
                    namespace, name, a.state, duration_seconds=duration, gpu_seconds=gpu
                )
                rt.metrics.record_progress(namespace, name, time.time())
                logger.info(
                    "Told trial result study=%s/%s trial=%d state=%s reason=%s",
                    namespace,
                    name,
                    a.trial,
                    a.state,
                    a.reason,
                )
        elif isinstance(a, RelaunchAttempt):
            await rt.db(rt.ledger.set_attempt, study, a.trial, a.attempt)
            await _create(
                rt,
                body=body,
                spec=spec,
                study=study,
                trial=a.trial,
                attempt=a.attempt,
                params=a.params,
            )
            rt.metrics.trial_retried(namespace, name)
            logger.info(
                "Relaunched trial study=%s/%s trial=%d attempt=%d reason=%s",
                namespace,
                name,
                a.trial,
                a.attempt,
                a.reason,
            )
        elif isinstance(a, CreateJob):
            await _create(
                rt,
                body=body,
                spec=spec,
                study=study,
                trial=a.trial,
                attempt=a.attempt,
                params=a.params,
            )
            logger.info(
                "Created missing Job study=%s/%s trial=%d attempt=%d",
                namespace,
                name,
                a.trial,
                a.attempt,
            )
        elif isinstance(a, DeleteJob):
            await asyncio.to_thread(rt.api.delete_job, namespace, a.name)
            logger.info(
                "Deleted Job study=%s/%s job=%s reason=%s", namespace, name, a.name, a.reason
            )
        elif isinstance(a, SuspendJob):
            await asyncio.to_thread(rt.api.suspend_job, namespace, a.name, a.suspend)
            logger.info(
                "%s Job study=%s/%s job=%s",
                "Suspended" if a.suspend else "Resumed",
                namespace,
                name,
                a.name,
            )
    for a in decision.actions:
        if isinstance(a, LaunchTrials):
            for _ in range(a.count):
                asked = time.monotonic()
                number, params = await rt.db(rt.ledger.ask, study, spec)
                rt.metrics.observe_ask(time.monotonic() - asked)
                await _create(
                    rt, body=body, spec=spec, study=study, trial=number, attempt=0, params=params
                )
                rt.metrics.job_launched(time.monotonic() - seen_free)
                _post(body, "Normal", R.TRIAL_LAUNCHED, f"Trial {number} launched with {params}")
                logger.info("Launched trial study=%s/%s trial=%d", namespace, name, number)
    return bool(decision.actions)


def _observe_metrics(
    rt: Runtime, namespace: str, name: str, spec: TuningStudySpec, decision: Decision
) -> None:
    status = decision.status
    counts = status.get("trials") or {}
    best: dict[str, float] = {}
    bt = status.get("bestTrial")
    if isinstance(bt, Mapping) and bt.get("values"):
        best[spec.objectives[0].name] = float(bt["values"][0])
    front = status.get("paretoFront") or []
    for i, o in enumerate(spec.objectives):
        vals = [float(t["values"][i]) for t in front if len(t.get("values") or []) > i]
        if vals and len(spec.objectives) > 1:
            best[o.name] = max(vals) if o.direction == "maximize" else min(vals)
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
        best_values=best,
        gpu_seconds=float(gpu.get("used", 0.0)),
        gpu_seconds_saved=float(gpu.get("savedByPruning", 0.0)),
        condition=str(status.get("state") or "Pending"),
    )


# ---------------------------------------------------------------------------------------------
# Deletion


@kopf.on.delete(GROUP, VERSION, PLURAL, retries=5, backoff=2.0)
async def study_deleted(**kwargs: Any) -> None:
    """Fail the running trials (reason ``StudyDeleted``) and delete the Jobs.

    Owner references make the Jobs go anyway; deleting them here stops the pods at once. The
    Optuna study stays in the database (its history is worth keeping).
    """
    body: kopf.Body = kwargs["body"]
    trial_jobs: JobsIndex = kwargs["trial_jobs"]
    rt = _runtime(kwargs["memo"])
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    uid = str(body.metadata.uid or "")
    study = rt.ledger.resolve(namespace, name)
    if study is None:
        # Not opened by this process yet (e.g. just restarted): open it to fail its trials.
        with contextlib.suppress(SpecError, *STORAGE_ERRORS):
            ts = parse_manifest(
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": _raw_spec(body),
                }
            )
            if await rt.db(rt.ledger.exists, namespace=namespace, name=name, uid=uid):
                study = await rt.db(
                    rt.ledger.open, ts.spec, namespace=namespace, name=name, uid=uid
                )
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
    for job in list(trial_jobs.get((namespace, study_label(name)), [])):
        meta = job.get("metadata") or {}
        if uid and not any(o.get("uid") == uid for o in meta.get("ownerReferences") or []):
            continue
        await asyncio.to_thread(rt.api.delete_job, namespace, str(meta.get("name")))
    rt.ledger.forget(namespace, name)
    rt.known.discard((namespace, name))
    rt.invalid_posted.pop((namespace, name), None)
    rt.gpus.pop((namespace, name), None)
    rt.metrics.forget_study(namespace, name)
    rt.wakeups.pop((namespace, study_label(name)), None)
