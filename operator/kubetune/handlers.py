"""The kopf registrations: startup and cleanup, the child indexes, the wake-ups, one reconcile
loop per TuningStudy, and deletion. Each handler is a few lines that hand over to a module
named for its concern:

- :mod:`kubetune.config`: the configuration; :mod:`kubetune.runtime`: what the process holds;
- :mod:`kubetune.observe`: what a pass sees; :mod:`kubetune.study_loop`: the loop and a pass;
- :mod:`kubetune.apply`: carrying out a decision; :mod:`kubetune.report_bridge`: the report
  API's hooks into the loop.

Child Jobs and Pods come from ``@kopf.index`` (kopf fills the indexes before any handler runs,
so a restarted operator sees every existing Job on its first pass). Configuration comes from
``memo.config`` (set by :func:`kubetune.operator_main.run_operator`) or, when kopf is started
directly (``kopf run -m kubetune.handlers``, as the tests do), from the environment
(:meth:`kubetune.config.OperatorConfig.from_env`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry

from kubetune.config import ConfigError, OperatorConfig
from kubetune.event_posting import EventPoster
from kubetune.jobs import LABEL_STUDY, study_label
from kubetune.kube_client import KubeApi
from kubetune.ledger import Ledger, make_storage
from kubetune.metrics import OperatorMetrics, metrics_app
from kubetune.observe import ChildIndex, configure_watching
from kubetune.observed_job import slim_job, slim_pod
from kubetune.report_bridge import on_report_event, resolve_study
from kubetune.reporting import create_report_app
from kubetune.runtime import Runtime, tune_collector
from kubetune.spec import GROUP, PLURAL, VERSION
from kubetune.study_loop import finish_deleted_study, run_study_loop
from kubetune.tokens import TokenSigner

__all__: list[str] = []

logger = logging.getLogger("kubetune.operator")


def _runtime(memo: Any) -> Runtime:
    rt = getattr(memo, "runtime", None)
    if not isinstance(rt, Runtime):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return rt


# ---------------------------------------------------------------------------------------------
# Startup and cleanup


@kopf.on.startup()
async def startup(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    memo: Any = kwargs["memo"]
    config = getattr(memo, "config", None)
    if not isinstance(config, OperatorConfig):
        try:
            config = OperatorConfig.from_env()
        except ConfigError as e:
            raise kopf.PermanentError(str(e)) from None
    settings.posting.loggers = False  # Events are posted explicitly, with CamelCase reasons
    settings.persistence.finalizer = "kubetune.io/finalizer"
    # Level-based handlers need no diff of the spec; kopf's default diff base copies the whole
    # spec into an annotation, and a large spec overflows the apiserver's 256 KiB limit on
    # annotations (then kopf can neither add nor remove the finalizer: the study is stuck).
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(ignored_fields=["spec"])
    configure_watching(settings)
    _quiet_child_events(logging.getLogger("kopf.objects"))
    registry = getattr(memo, "registry", None)
    if not isinstance(registry, CollectorRegistry):
        registry = CollectorRegistry()
    rt = _make_runtime(config, registry)
    tune_collector()
    rt.events.start()
    await _start_servers(rt)
    memo.runtime = rt
    logger.info("Started kubetune operator config=%r ports=%s", config, rt.ports)


class _QuietChildEvents(logging.Filter):
    """Drops kopf's INFO line "Handler 'job_event' succeeded." (and ``pod_event``): one per
    Job and Pod event, 70,000 lines and 9 % of the event loop at 5,000 Jobs (benchmarks/
    README.md, scale). Failures of these handlers are still logged."""

    QUIET = frozenset({"Handler 'job_event' succeeded.", "Handler 'pod_event' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET


def _quiet_child_events(kopf_objects: logging.Logger) -> None:
    if not any(isinstance(f, _QuietChildEvents) for f in kopf_objects.filters):
        kopf_objects.addFilter(_QuietChildEvents())


def _make_runtime(config: OperatorConfig, registry: CollectorRegistry) -> Runtime:
    storage = make_storage(
        config.storage_url, pool_size=config.pool_size, max_overflow=config.max_overflow
    )
    api = KubeApi.from_environment()
    return Runtime(
        config=config,
        ledger=Ledger(storage),
        signer=TokenSigner(config.token_key),
        metrics=OperatorMetrics(registry),
        registry=registry,
        api=api,
        executor=concurrent.futures.ThreadPoolExecutor(
            max_workers=config.pool_size + config.max_overflow, thread_name_prefix="ledger"
        ),
        events=EventPoster(api.core),
        report_url=config.report_url,
    )


async def _start_servers(rt: Runtime) -> None:
    """The metrics endpoint and the report API (a port of -1 disables one, 0 picks a port)."""
    if rt.config.metrics_port >= 0:
        rt.ports["metrics"] = await _serve(rt, metrics_app(rt.registry), rt.config.metrics_port)
    if rt.config.report_port >= 0:
        app = create_report_app(
            functools.partial(resolve_study, rt),
            rt.signer,
            executor=rt.executor,
            on_event=functools.partial(on_report_event, rt),
        )
        rt.ports["report"] = await _serve(rt, app, rt.config.report_port)
        if rt.report_url is None:
            rt.report_url = f"http://127.0.0.1:{rt.ports['report']}"
        rt.reports_since = datetime.now(UTC)


async def _serve(rt: Runtime, app: web.Application, port: int) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)
    await site.start()
    rt.runners.append(runner)
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if not isinstance(rt, Runtime):
        return
    rt.closing = True
    for runner in rt.runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    await rt.events.stop()
    rt.executor.shutdown(wait=False, cancel_futures=True)
    rt.api.close()
    logger.info("Stopped kubetune operator")


# ---------------------------------------------------------------------------------------------
# Indexes and wake-ups


@kopf.index("batch", "v1", "jobs", labels={LABEL_STUDY: kopf.PRESENT})
async def trial_jobs(**kwargs: Any) -> Any:
    return {(kwargs["namespace"], kwargs["labels"][LABEL_STUDY]): slim_job(kwargs["body"])}


@kopf.index("", "v1", "pods", labels={LABEL_STUDY: kopf.PRESENT})
async def trial_pods(**kwargs: Any) -> Any:
    return {(kwargs["namespace"], kwargs["labels"][LABEL_STUDY]): slim_pod(kwargs["body"])}


def _child_event(kind: str, kwargs: dict[str, Any]) -> None:
    """A trial Job's or Pod's event: wake its study's loop when it changes what the decision
    reads (:mod:`kubetune.wakeups`)."""
    rt = getattr(kwargs["memo"], "runtime", None)
    state = rt.peek(kwargs["namespace"], kwargs["labels"].get(LABEL_STUDY)) if rt else None
    if not isinstance(rt, Runtime) or state is None:
        return
    name = str(kwargs["name"])
    if kind == "job":
        # kopf indexes an event before it calls on.event handlers: from now on the index
        # knows this Job (or knows it is gone), so a placeholder for it is not needed.
        state.seen[name] = time.monotonic()
    if state.wakeups.changed(kind, name, kwargs.get("type"), kwargs["body"]):
        state.wake.set()


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_STUDY: kopf.PRESENT})
async def job_event(**kwargs: Any) -> None:
    _child_event("job", kwargs)


@kopf.on.event("", "v1", "pods", labels={LABEL_STUDY: kopf.PRESENT})
async def pod_event(**kwargs: Any) -> None:
    _child_event("pod", kwargs)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def study_event(**kwargs: Any) -> None:
    rt = getattr(kwargs["memo"], "runtime", None)
    if isinstance(rt, Runtime):
        namespace, name = str(kwargs["namespace"]), str(kwargs["name"])
        if (kwargs.get("type") or "") == "DELETED":
            state = rt.peek(namespace, study_label(name))
            if state is not None:
                state.known = False
        else:
            rt.study(namespace, name).known = True
        rt.wake(namespace, study_label(name))


# ---------------------------------------------------------------------------------------------
# The reconcile loop and deletion


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def study_daemon(**kwargs: Any) -> None:
    jobs: ChildIndex = kwargs["trial_jobs"]
    pods: ChildIndex = kwargs["trial_pods"]
    await run_study_loop(_runtime(kwargs["memo"]), kwargs["body"], kwargs["stopped"], jobs, pods)


@kopf.on.delete(GROUP, VERSION, PLURAL, retries=5, backoff=2.0)
async def study_deleted(**kwargs: Any) -> None:
    """Fail the running trials (reason ``StudyDeleted``) and delete the Jobs."""
    jobs: ChildIndex = kwargs["trial_jobs"]
    await finish_deleted_study(_runtime(kwargs["memo"]), kwargs["body"], jobs)
