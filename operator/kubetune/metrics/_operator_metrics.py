"""OperatorMetrics: the calls the operator makes, each setting its metric families.

Nothing here reads a clock for wall time, talks to Kubernetes or Optuna, or raises on a bad
value (see :mod:`._values`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kubetune.metrics._families import MetricFamilies
from kubetune.metrics._values import (
    LEDGER_STATES,
    OUTCOME_STATES,
    REPORT_ROUTES,
    amount,
    camel,
    label,
    study_key,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["OperatorMetrics"]

logger = logging.getLogger("kubetune.metrics")


class OperatorMetrics(MetricFamilies):
    """Every metric kubetune exports, registered on ``registry`` (see :mod:`kubetune.metrics`).

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
        super().__init__(registry, version=version)

    # -- process events ---------------------------------------------------------------------

    def trial_finished(
        self, namespace: str, study: str, state: str, *, duration_seconds: float
    ) -> None:
        """Count one trial outcome (COMPLETE, PRUNED or FAIL) that this process recorded.

        Call it once, where the operator tells Optuna the result (or hears that the report
        API did); its GPU time is counted when its Job is settled (:meth:`gpu_settled`).
        """
        key = study_key(namespace, study)
        upper = state.upper() if isinstance(state, str) else ""
        if key is None or upper not in OUTCOME_STATES or upper == "RETRIED":
            if key is not None:
                logger.warning("Dropped a trial outcome with an invalid state=%r.", state)
            return
        self._ensure_outcome_series(key)
        self.trials_total.labels(*key, upper).inc()
        duration = amount(duration_seconds, "duration_seconds")
        if duration is not None:
            self.trial_duration.labels(key[0], upper).observe(duration)

    def gpu_settled(
        self, namespace: str, study: str, *, gpu_seconds: float, saved_by_pruning: float = 0.0
    ) -> None:
        """Count GPU-seconds this process settled into the ledger, and what a pruned trial's
        settlement adds to the saving, both as the reconcile core computed them."""
        key = study_key(namespace, study)
        if key is None:
            return
        self._ensure_outcome_series(key)
        used = amount(gpu_seconds, "gpu_seconds")
        if used:
            self.trial_gpu_seconds.labels(*key).inc(used)
        saved = amount(saved_by_pruning, "saved_by_pruning")
        if saved:
            self.gpu_seconds_saved.labels(*key).inc(saved)

    def trial_retried(self, namespace: str, study: str) -> None:
        """Count one infrastructure retry (a new attempt of the same trial) launched here."""
        key = study_key(namespace, study)
        if key is not None:
            self._ensure_outcome_series(key)
            self.trials_total.labels(*key, "RETRIED").inc()

    def job_launched(self, latency_seconds: float) -> None:
        """Observe the time from a free slot being seen to the trial's Job being created."""
        latency = amount(latency_seconds, "latency_seconds")
        if latency is not None:
            self.job_launch_latency.observe(latency)

    def observe_reconcile(self, seconds: float) -> None:
        duration = amount(seconds, "seconds")
        if duration is not None:
            self.reconcile_duration.observe(duration)

    def reconcile_failed(self, reason: str) -> None:
        """Count a failed reconcile; ``reason`` is a CamelCase constant (else ``Other``)."""
        self.reconcile_errors.labels(camel(reason)).inc()

    def observe_ask(self, seconds: float) -> None:
        duration = amount(seconds, "seconds")
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
        key = study_key(namespace, study)
        when = amount(timestamp, "timestamp")
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
        key = study_key(namespace, study)
        if key is None:
            return
        counts = {str(state).upper(): count for state, count in trials.items()}
        for state in counts.keys() - set(LEDGER_STATES):
            logger.warning("Ignored trials in unknown state=%r for study %s/%s.", state, *key)
        for state in LEDGER_STATES:
            count = amount(counts.get(state, 0), f"trials[{state}]")
            if count is not None:
                self.study_trials.labels(*key, state).set(count)
        self._ensure_outcome_series(key)
        for gauge, value, field in (
            (self.trials_running, running, "running"),
            (self.study_parallelism, parallelism, "parallelism"),
            (self.study_gpu_seconds, gpu_seconds, "gpu_seconds"),
            (self.study_gpu_seconds_saved, gpu_seconds_saved, "gpu_seconds_saved"),
        ):
            number = amount(value, field)
            if number is not None:
                gauge.labels(*key).set(number)
        self._set_best_values(key, best_values)
        self._set_condition(key, camel(condition))
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

    def _ensure_outcome_series(self, key: tuple[str, str]) -> None:
        """Create every outcome series at 0, so the first increment shows in ``increase()``."""
        for state in OUTCOME_STATES:
            self.trials_total.labels(*key, state)
        self.trial_gpu_seconds.labels(*key)
        self.gpu_seconds_saved.labels(*key)

    def _set_best_values(self, key: tuple[str, str], best_values: Mapping[str, float]) -> None:
        fresh: dict[str, float] = {}
        for objective, value in best_values.items():
            name = label(objective, "objective")
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
