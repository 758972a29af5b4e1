"""Prometheus metrics of the kubetune operator, on an injected registry.

The operator creates one :class:`OperatorMetrics` on a ``CollectorRegistry`` it owns (tests pass
their own) and calls the methods below; nothing here reads a clock for wall time, talks to
Kubernetes or Optuna, or raises on a bad value (a bad value is dropped and logged with the field's
name, because a metrics call must never break a reconcile).

Where things are: the families and their buckets in ``_families``, the calls that set them in
``_operator_metrics``, the words a label may take and the checks of every value in ``_values``,
serving in ``_exposition``.

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
  ``kubetune_trial_gpu_seconds_total{namespace,study}`` (GPU-seconds this process settled into
  the ledger: what each ``RecordUsage`` adds to the trial's stored figure),
  ``kubetune_gpu_seconds_saved_by_pruning_total{namespace,study}`` (each pruned trial's share of
  ``status.gpuSeconds.savedByPruning`` when its Job was settled; the gauge follows the status),
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
    metrics.job_launched(latency_seconds)       # slot seen free -> Job created (201 or 409)
    metrics.trial_retried(ns, name)             # an infrastructure retry was launched
    metrics.trial_finished(ns, name, "PRUNED", duration_seconds=...)
    metrics.gpu_settled(ns, name, gpu_seconds=..., saved_by_pruning=...)  # a RecordUsage applied
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

from kubetune.metrics._exposition import metrics_app, metrics_handler, render
from kubetune.metrics._families import JOB_LAUNCH_BUCKETS, LATENCY_BUCKETS, TRIAL_DURATION_BUCKETS
from kubetune.metrics._operator_metrics import OperatorMetrics
from kubetune.metrics._values import LEDGER_STATES, OUTCOME_STATES, REPORT_ROUTES

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
