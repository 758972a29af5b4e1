"""The metric families kubetune exports, declared once on an injected registry.

Two kinds, chosen per metric so that an operator restart tells no lies: ledger gauges, set
from the Optuna ledger on every pass (a restart keeps them true; never ``rate()`` them), and
process counters and histograms, what this process did (zero at each start).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["JOB_LAUNCH_BUCKETS", "LATENCY_BUCKETS", "TRIAL_DURATION_BUCKETS", "MetricFamilies"]

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


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricFamilies:
    """Every gauge, counter and histogram, registered on ``registry``; the methods that set
    them live on :class:`~kubetune.metrics.OperatorMetrics`.

    Args:
        registry: where the metrics live; the operator's own, or a test's.
        version: reported in ``kubetune_build_info``; defaults to the installed package's.
    """

    def __init__(self, registry: CollectorRegistry, *, version: str | None = None) -> None:
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
            "GPU-seconds settled by this operator process (finished Job attempts).",
            study,
            registry=registry,
        )
        self.gpu_seconds_saved = Counter(
            "kubetune_gpu_seconds_saved_by_pruning_total",
            "GPU-seconds saved by pruned trials whose Jobs this operator process settled.",
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
