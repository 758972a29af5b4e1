"""Applying a decision: the GPU counters count the core's settlement, not a figure of their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from kubetune.apply import count_settled_usage
from kubetune.metrics import OperatorMetrics
from kubetune.observed_job import JobPhase, ObservedJob
from kubetune.reconcile import Decision, decide
from kubetune.spec import TuningStudySpec, parse_manifest
from kubetune.status import LedgerSnapshot, TrialRecord, TrialStateName, TrialUsage
from support.manifests import study_manifest

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NS, NAME = "ml", "demo"


def _spec() -> TuningStudySpec:
    container = {
        "name": "trainer",
        "image": "trainer:1",
        "resources": {"limits": {"nvidia.com/gpu": 2}},
    }
    manifest = study_manifest(
        NAME, namespace=NS, budget={"maxTrials": 3, "parallelism": 3}, container=container
    )
    return parse_manifest(manifest).spec


def _job(trial: int, phase: JobPhase, seconds: float | None = None) -> ObservedJob:
    done = T0 + timedelta(seconds=seconds) if seconds is not None else None
    return ObservedJob(f"{NAME}-{trial}", trial, 0, phase, start_time=T0, completion_time=done)


def _trial(number: int, state: TrialStateName, value: float | None = None) -> TrialRecord:
    values = (value,) if value is not None else None
    return TrialRecord(number, state, {"lr": 0.01}, values, job_created=0, datetime_start=T0)


def _pass(
    spec: TuningStudySpec,
    metrics: OperatorMetrics,
    trials: list[TrialRecord],
    jobs: list[ObservedJob],
    usage: dict[int, TrialUsage],
) -> Decision:
    """Decide, then store and count the settlement as ``apply_decision`` does."""
    snap = LedgerSnapshot("ml.demo.uid", tuple(trials), None, dict(usage))
    decision = decide(spec, 1, jobs, snap, T0 + timedelta(hours=1))
    count_settled_usage(metrics, NS, NAME, decision.usage, snap.usage)
    usage.update({r.trial: TrialUsage(r.attempts, r.gpu_seconds) for r in decision.usage})
    return decision


def test_gpu_counters_agree_with_the_status_for_a_pruned_trial() -> None:
    spec, registry = _spec(), CollectorRegistry()
    metrics = OperatorMetrics(registry)
    usage: dict[int, TrialUsage] = {}
    # Two complete trials (100 s and 300 s on 2 GPUs) settle while trial 2 still runs.
    trials = [_trial(0, "COMPLETE", 0.9), _trial(1, "COMPLETE", 0.8), _trial(2, "RUNNING")]
    jobs = [_job(0, "Succeeded", 100), _job(1, "Succeeded", 300), _job(2, "Active")]
    _pass(spec, metrics, trials, jobs, usage)
    # The report API prunes trial 2; its Job ends after 50 s and is settled in the next pass.
    trials[2] = _trial(2, "PRUNED")
    jobs[2] = _job(2, "Succeeded", 50)
    decision = _pass(spec, metrics, trials, jobs, usage)

    labels = {"namespace": NS, "study": NAME}
    used = registry.get_sample_value("kubetune_trial_gpu_seconds_total", labels)
    saved = registry.get_sample_value("kubetune_gpu_seconds_saved_by_pruning_total", labels)
    # Mean complete trial 400 GPU-seconds; the pruned one used 100, so it saved 300.
    assert decision.status["gpuSeconds"] == {"used": 900.0, "savedByPruning": 300.0}
    assert (used, saved) == (900.0, 300.0)
    # Deciding again on the stored settlement counts nothing more.
    _pass(spec, metrics, trials, jobs, usage)
    assert registry.get_sample_value("kubetune_trial_gpu_seconds_total", labels) == 900.0
    assert registry.get_sample_value("kubetune_gpu_seconds_saved_by_pruning_total", labels) == 300.0
