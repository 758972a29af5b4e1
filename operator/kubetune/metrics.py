"""Prometheus metrics of the kubetune operator, on an injected registry.

The operator creates one :class:`OperatorMetrics` on a ``CollectorRegistry`` it owns (tests pass
their own) and calls the methods below; nothing here reads a clock for wall time, talks to
Kubernetes or Optuna, or raises on a bad value (a bad value is dropped and logged with the field's
name, because a metrics call must never break a reconcile).

Two kinds of numbers, chosen per metric so that an operator restart tells no lies:

* **Ledger gauges** — set from the Optuna ledger (and the study's status) on every reconcile with
  :meth:`OperatorMetrics.observe_study`. A restart does not reset them, and running the reconcile
  twice sets the same values. Never ``rate()`` them.
  ``kubetune_study_trials{namespace,study,state}`` (COMPLETE, PRUNED, FAIL, RUNNING, WAITING,
  RETRIED: every state is always present, 0 when none),
  ``kubetune_trials_running{namespace,study}``, ``kubetune_study_parallelism{namespace,study}``,
  ``kubetune_study_best_value{namespace,study,objective}``,
  ``kubetune_study_gpu_seconds{namespace,study}``,
  ``kubetune_study_gpu_seconds_saved_by_pruning{namespace,study}``,
  ``kubetune_study_last_progress_timestamp_seconds{namespace,study}``,
  ``kubetune_studies{namespace,condition}`` (studies per condition, derived from the condition
  each study last reported).
* **Process counters and histograms** — what *this* operator process did; they start at zero
  when it starts (Prometheus' ``rate()``/``increase()`` handle that reset).
  ``kubetune_trials_total{namespace,study,state}`` (trial outcomes this process recorded: COMPLETE,
  PRUNED, FAIL, and RETRIED for each infrastructure retry it launched),
  ``kubetune_trial_gpu_seconds_total{namespace,study}``,
  ``kubetune_gpu_seconds_saved_by_pruning_total{namespace,study}``,
  ``kubetune_trial_duration_seconds{namespace,state}``, ``kubetune_reconcile_duration_seconds``,
  ``kubetune_reconcile_errors_total{reason}``, ``kubetune_optuna_ask_duration_seconds``,
  ``kubetune_job_launch_latency_seconds`` (a free slot seen -> its Job created),
  ``kubetune_report_requests_total{route,code}``.
* ``kubetune_storage_up`` (1 when the last storage call succeeded, else 0) and
  ``kubetune_build_info{version,python_version,optuna_version}`` (always 1).

Labels stay bounded: namespace, study, objective, state, condition, route, code and reason; never
a trial number, a pod or a Job name. Free-form ``reason``/``condition`` values that are not
CamelCase words become ``Other``; unknown report routes become ``other``.

How the operator uses it::

    metrics = OperatorMetrics(registry)
    metrics.observe_reconcile(seconds)          # one reconcile pass
    metrics.observe_ask(seconds)                # one study.ask()
    metrics.job_launched(latency_seconds)   # slot seen free -> Job created (201 or 409)
        metrics.trial_retried(ns, name)         # an infrastructure retry was launched
        metrics.trial_finished(ns, name, "PRUNED", duration_seconds=...,
                               gpu_seconds=..., gpu_seconds_saved=...)
        metrics.observe_study(ns, name, trials={"COMPLETE": 3, ...}, running=2, parallelism=4,
                              best_values={"val_accuracy": 0.97}, gpu_seconds=...,
                              gpu_seconds_saved=..., condition="Running",
                              last_progress=<unix time of the newest trial start/finish>)
    metrics.reconcile_failed("StorageUnavailable")     # a CamelCase reason constant
    metrics.storage_reachable(False)
    metrics.report_request("report", 200)               # in the report API, per request
    metrics.record_progress(ns, name, time.time())      # a trial reported or finished
    metrics.forget_study(ns, name)                      # the TuningStudy was deleted

Serving: mount :func:`metrics_handler` on an aiohttp app (``GET /metrics``), or use
:func:`metrics_app` for a listener of its own (the operator's, port 8080).
"""

from __future__ import annotations

import logging
import math
import platform
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

__all__ = [
    "JOB_LAUNCH_BUCKETS",
    "LATENCY_BUCKETS",
    "LEDGER_STATES",
    "OUTCOME_STATES",
    "REPORT_ROUTES",
    "TRIAL_DURATION_BUCKETS",
    "OperatorMetrics",
    "metrics_app",
    "metrics_handler",
    "render",
]

logger = logging.getLogger(__name__)

#: Trial outcomes counted by ``kubetune_trials_total``.
OUTCOME_STATES: Final = ("COMPLETE", "PRUNED", "FAIL", "RETRIED")
#: States of ``kubetune_study_trials`` (Optuna's states plus RETRIED, the number of retries).
LEDGER_STATES: Final = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "RETRIED")
#: Routes of the report API (docs/architecture.md); anything else is counted as ``other``.
REPORT_ROUTES: Final = ("report", "complete", "fail", "heartbeat", "prune")

#: From a second to a week: trials range from smoke tests to multi-day trainings.
TRIAL_DURATION_BUCKETS: Final = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
    14400.0, 28800.0, 43200.0, 86400.0, 172800.0, 345600.0, 604800.0,
)  # fmt: skip
#: Reconcile passes and sampler calls: milliseconds normally, a minute for a slow GP sampler.
LATENCY_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Slot free -> Job created: sub-second when healthy, minutes when the API server struggles.
JOB_LAUNCH_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

_STUDY: Final = ["namespace", "study"]
_CAMEL_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")
_OTHER = "Other"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _name(value: object, field: str) -> str | None:
    """A namespace/study/objective label value, or None (logged) when it is unusable."""
    if not isinstance(value, str) or not value or len(value) > 253:
        logger.warning("Dropped a metric update with an invalid %s=%r.", field, value)
        return None
    return value


def _amount(value: object, field: str) -> float | None:
    """A finite, non-negative float, or None (logged): counters refuse negatives."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        logger.warning("Dropped a metric update with a non-numeric %s=%r.", field, value)
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        logger.warning("Dropped a metric update with %s=%r (need finite and >= 0).", field, value)
        return None
    return number


def _camel(value: object) -> str:
    return value if isinstance(value, str) and _CAMEL_WORD.match(value) else _OTHER


class OperatorMetrics:
    """Every metric kubetune exports, registered on ``registry`` (see the module docstring).

    Args:
        registry: where the metrics live; the operator's own, or a test's.
        version: reported in ``kubetune_build_info``; defaults to the installed package's.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        # What we created per study, so forget_study() can drop exactly that.
        self._objectives: dict[tuple[str, str], set[str]] = {}
        self._conditions: dict[tuple[str, str], str] = {}
        self._condition_series: set[tuple[str, str]] = set()
        self._progress: dict[tuple[str, str], float] = {}
        self._gauges(registry, version)
        self._counters(registry)

    def _gauges(self, registry: CollectorRegistry, version: str | None) -> None:
        """The ledger gauges (set from the ledger on every pass; a restart keeps them true)."""
        study = _STUDY
        self.study_trials = Gauge(
            "kubetune_study_trials",
            "Trials of the study in the Optuna ledger by state (RETRIED: retries launched).",
            [*study, "state"],
            registry=registry,
        )
        self.trials_running = Gauge(
            "kubetune_trials_running",
            "Trials of the study whose Job is running now.",
            study,
            registry=registry,
        )
        self.study_parallelism = Gauge(
            "kubetune_study_parallelism",
            "The study's allowed parallel trials (spec.budget.parallelism).",
            study,
            registry=registry,
        )
        self.study_best_value = Gauge(
            "kubetune_study_best_value",
            "Best value so far of each objective of the study.",
            [*study, "objective"],
            registry=registry,
        )
        self.study_gpu_seconds = Gauge(
            "kubetune_study_gpu_seconds",
            "GPU-seconds used by the study's trials, from the ledger.",
            study,
            registry=registry,
        )
        self.study_gpu_seconds_saved = Gauge(
            "kubetune_study_gpu_seconds_saved_by_pruning",
            "GPU-seconds the study's pruned trials would have used had they run to the end.",
            study,
            registry=registry,
        )
        self.study_last_progress = Gauge(
            "kubetune_study_last_progress_timestamp_seconds",
            "Unix time of the study's newest progress (trial started, reported or finished).",
            study,
            registry=registry,
        )
        self.studies = Gauge(
            "kubetune_studies",
            "TuningStudies by their current condition.",
            ["namespace", "condition"],
            registry=registry,
        )
        self.storage_up = Gauge(
            "kubetune_storage_up",
            "1 when the last call to the Optuna storage succeeded, 0 when it failed.",
            registry=registry,
        )
        self._build_info(registry, version)

    def _build_info(self, registry: CollectorRegistry, version: str | None) -> None:
        self.build_info = Gauge(
            "kubetune_build_info",
            "Always 1; labels carry the running versions.",
            ["version", "python_version", "optuna_version"],
            registry=registry,
        )
        self.build_info.labels(
            version or _version("kubetune"), platform.python_version(), _version("optuna")
        ).set(1)

    def _counters(self, registry: CollectorRegistry) -> None:
        """What this process did: counters and histograms, zero at each start."""
        study = _STUDY
        self.trials_total = Counter(
            "kubetune_trials_total",
            "Trial outcomes recorded by this operator process (RETRIED: retries launched).",
            [*study, "state"],
            registry=registry,
        )
        self.trial_gpu_seconds = Counter(
            "kubetune_trial_gpu_seconds_total",
            "GPU-seconds of the trials that finished in this operator process.",
            study,
            registry=registry,
        )
        self.gpu_seconds_saved = Counter(
            "kubetune_gpu_seconds_saved_by_pruning_total",
            "GPU-seconds saved by the trials pruned in this operator process.",
            study,
            registry=registry,
        )
        self.trial_duration = Histogram(
            "kubetune_trial_duration_seconds",
            "Wall time of finished trials, all attempts included.",
            ["namespace", "state"],
            buckets=TRIAL_DURATION_BUCKETS,
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time of one reconcile pass of one study.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors_total",
            "Reconcile passes that ended in an error, by CamelCase reason.",
            ["reason"],
            registry=registry,
        )
        self.ask_duration = Histogram(
            "kubetune_optuna_ask_duration_seconds",
            "Time of Optuna's study.ask() (the sampler choosing parameters).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.job_launch_latency = Histogram(
            "kubetune_job_launch_latency_seconds",
            "Time from a free trial slot being seen to its Job being created.",
            buckets=JOB_LAUNCH_BUCKETS,
            registry=registry,
        )
        self.report_requests = Counter(
            "kubetune_report_requests_total",
            "Requests to the report API by route and HTTP status code.",
            ["route", "code"],
            registry=registry,
        )

    # -- process events ---------------------------------------------------------------------

    def trial_finished(
        self,
        namespace: str,
        study: str,
        state: str,
        *,
        duration_seconds: float,
        gpu_seconds: float = 0.0,
        gpu_seconds_saved: float = 0.0,
    ) -> None:
        """Count one trial outcome (COMPLETE, PRUNED or FAIL) that this process recorded.

        Call it once, where the operator tells Optuna the result; ``gpu_seconds_saved`` is the
        estimate of what a pruned trial would still have used.
        """
        key = self._study_key(namespace, study)
        upper = state.upper() if isinstance(state, str) else ""
        if key is None or upper not in OUTCOME_STATES or upper == "RETRIED":
            if key is not None:
                logger.warning("Dropped a trial outcome with an invalid state=%r.", state)
            return
        self._ensure_outcome_series(key)
        self.trials_total.labels(*key, upper).inc()
        duration = _amount(duration_seconds, "duration_seconds")
        if duration is not None:
            self.trial_duration.labels(key[0], upper).observe(duration)
        used = _amount(gpu_seconds, "gpu_seconds")
        if used:
            self.trial_gpu_seconds.labels(*key).inc(used)
        saved = _amount(gpu_seconds_saved, "gpu_seconds_saved")
        if saved:
            self.gpu_seconds_saved.labels(*key).inc(saved)

    def trial_retried(self, namespace: str, study: str) -> None:
        """Count one infrastructure retry (a new attempt of the same trial) launched here."""
        key = self._study_key(namespace, study)
        if key is not None:
            self._ensure_outcome_series(key)
            self.trials_total.labels(*key, "RETRIED").inc()

    def job_launched(self, latency_seconds: float) -> None:
        """Observe the time from a free slot being seen to the trial's Job being created."""
        latency = _amount(latency_seconds, "latency_seconds")
        if latency is not None:
            self.job_launch_latency.observe(latency)

    def observe_reconcile(self, seconds: float) -> None:
        duration = _amount(seconds, "seconds")
        if duration is not None:
            self.reconcile_duration.observe(duration)

    def reconcile_failed(self, reason: str) -> None:
        """Count a failed reconcile; ``reason`` is a CamelCase constant (else ``Other``)."""
        self.reconcile_errors.labels(_camel(reason)).inc()

    def observe_ask(self, seconds: float) -> None:
        duration = _amount(seconds, "seconds")
        if duration is not None:
            self.ask_duration.observe(duration)

    def report_request(self, route: str, code: int) -> None:
        """Count one report API request; ``route`` is the last path segment (``report``...)."""
        label_route = route if route in REPORT_ROUTES else "other"
        valid = isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
        self.report_requests.labels(label_route, str(code) if valid else "invalid").inc()

    def storage_reachable(self, up: bool) -> None:
        """Record whether the last call to the Optuna storage succeeded."""
        self.storage_up.set(1 if up else 0)

    def record_progress(self, namespace: str, study: str, timestamp: float) -> None:
        """Move the study's last-progress time forward to ``timestamp`` (unix seconds).

        Only ever forward, so the reconcile (from the ledger) and the report API (live) can both
        call it in any order.
        """
        key = self._study_key(namespace, study)
        when = _amount(timestamp, "timestamp")
        if key is None or when is None:
            return
        with self._lock:
            newest = max(when, self._progress.get(key, 0.0))
            self._progress[key] = newest
            self.study_last_progress.labels(*key).set(newest)

    # -- ledger snapshot --------------------------------------------------------------------

    def observe_study(
        self,
        namespace: str,
        study: str,
        *,
        trials: Mapping[str, int],
        running: int,
        parallelism: int,
        best_values: Mapping[str, float],
        gpu_seconds: float,
        gpu_seconds_saved: float,
        condition: str,
        last_progress: float | None = None,
    ) -> None:
        """Set the study's ledger gauges from one reconcile's snapshot (idempotent).

        Args:
            trials: trial counts by state (Optuna's state names, plus RETRIED); states left out
                are 0.
            running: trials whose Job runs now.
            parallelism: the study's allowed parallel trials.
            best_values: objective name -> best value so far; objectives left out (no complete
                trial yet) have no series. For several objectives, the best of each over the
                Pareto front.
            gpu_seconds / gpu_seconds_saved: the status' totals for the whole study.
            condition: the study's summarising condition, a CamelCase word such as ``Running``,
                ``Succeeded``, ``Failed``, ``Invalid``.
            last_progress: unix time of the newest trial start or finish in the ledger.
        """
        key = self._study_key(namespace, study)
        if key is None:
            return
        counts = {str(state).upper(): count for state, count in trials.items()}
        for state in counts.keys() - set(LEDGER_STATES):
            logger.warning("Ignored trials in unknown state=%r for study %s/%s.", state, *key)
        for state in LEDGER_STATES:
            count = _amount(counts.get(state, 0), f"trials[{state}]")
            if count is not None:
                self.study_trials.labels(*key, state).set(count)
        self._ensure_outcome_series(key)
        for gauge, value, field in (
            (self.trials_running, running, "running"),
            (self.study_parallelism, parallelism, "parallelism"),
            (self.study_gpu_seconds, gpu_seconds, "gpu_seconds"),
            (self.study_gpu_seconds_saved, gpu_seconds_saved, "gpu_seconds_saved"),
        ):
            amount = _amount(value, field)
            if amount is not None:
                gauge.labels(*key).set(amount)
        self._set_best_values(key, best_values)
        self._set_condition(key, _camel(condition))
        if last_progress is not None:
            self.record_progress(*key, last_progress)

    def forget_study(self, namespace: str, study: str) -> None:
        """Drop every series of a deleted study (histograms keep only namespace-wide series)."""
        key = (namespace, study)
        for state in LEDGER_STATES:
            self.study_trials.remove(*key, state)
        for state in OUTCOME_STATES:
            self.trials_total.remove(*key, state)
        for labelled in (
            self.trials_running,
            self.study_parallelism,
            self.study_gpu_seconds,
            self.study_gpu_seconds_saved,
            self.study_last_progress,
            self.trial_gpu_seconds,
            self.gpu_seconds_saved,
        ):
            labelled.remove(*key)
        with self._lock:
            for objective in self._objectives.pop(key, set()):
                self.study_best_value.remove(*key, objective)
            self._progress.pop(key, None)
            self._conditions.pop(key, None)
            self._refresh_studies_locked()

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _study_key(namespace: str, study: str) -> tuple[str, str] | None:
        ns, name = _name(namespace, "namespace"), _name(study, "study")
        return None if ns is None or name is None else (ns, name)

    def _ensure_outcome_series(self, key: tuple[str, str]) -> None:
        """Create every outcome series at 0, so the first increment shows in ``increase()``."""
        for state in OUTCOME_STATES:
            self.trials_total.labels(*key, state)
        self.trial_gpu_seconds.labels(*key)
        self.gpu_seconds_saved.labels(*key)

    def _set_best_values(self, key: tuple[str, str], best_values: Mapping[str, float]) -> None:
        fresh: dict[str, float] = {}
        for objective, value in best_values.items():
            name = _name(objective, "objective")
            if name is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                logger.warning("Dropped best_values[%r]=%r: not a number.", objective, value)
            elif math.isfinite(value):
                fresh[name] = float(value)
        with self._lock:
            for gone in self._objectives.get(key, set()) - fresh.keys():
                self.study_best_value.remove(*key, gone)
            self._objectives[key] = set(fresh)
            for objective, value in fresh.items():
                self.study_best_value.labels(*key, objective).set(value)

    def _set_condition(self, key: tuple[str, str], condition: str) -> None:
        with self._lock:
            self._conditions[key] = condition
            self._refresh_studies_locked()

    def _refresh_studies_locked(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for (namespace, _), condition in self._conditions.items():
            counts[namespace, condition] = counts.get((namespace, condition), 0) + 1
        for gone in self._condition_series - counts.keys():
            self.studies.remove(*gone)
        for labels, count in counts.items():
            self.studies.labels(*labels).set(count)
        self._condition_series = set(counts)


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format 0.0.4 (what every Prometheus 2.x reads)."""
    return generate_latest(registry)


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving ``registry``: ``app.router.add_get("/metrics", handler)``."""
    from aiohttp import web

    async def handle_metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=render(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    return handle_metrics


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """A small aiohttp app with ``GET /metrics``, for a listener of its own (port 8080)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    return app
