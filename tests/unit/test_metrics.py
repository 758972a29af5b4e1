"""OperatorMetrics rendered by prometheus_client and parsed back, as Prometheus would read it."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Callable

import pytest
from aiohttp import ClientSession, web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.metrics import (
    LEDGER_STATES,
    OperatorMetrics,
    metrics_app,
    metrics_handler,
    render,
)

NS, STUDY = "ml", "digits"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples(registry) if n == name]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> OperatorMetrics:
    return OperatorMetrics(registry, version="9.9.9")


def observe(metrics: OperatorMetrics, study: str = STUDY, **overrides: object) -> None:
    arguments: dict[str, object] = {
        "trials": {"COMPLETE": 3, "PRUNED": 2, "FAIL": 1, "RUNNING": 2},
        "running": 2,
        "parallelism": 4,
        "best_values": {"val_accuracy": 0.97},
        "gpu_seconds": 3600.0,
        "gpu_seconds_saved": 1200.0,
        "condition": "Running",
        "last_progress": 1_700_000_000.0,
    }
    arguments.update(overrides)
    metrics.observe_study(NS, study, **arguments)  # type: ignore[arg-type]


REQUIRED = {
    "kubetune_trials_total": "counter",
    "kubetune_trials_running": "gauge",
    "kubetune_study_parallelism": "gauge",
    "kubetune_study_best_value": "gauge",
    "kubetune_study_trials": "gauge",
    "kubetune_trial_duration_seconds": "histogram",
    "kubetune_trial_gpu_seconds_total": "counter",
    "kubetune_gpu_seconds_saved_by_pruning_total": "counter",
    "kubetune_study_gpu_seconds": "gauge",
    "kubetune_study_gpu_seconds_saved_by_pruning": "gauge",
    "kubetune_reconcile_duration_seconds": "histogram",
    "kubetune_reconcile_errors_total": "counter",
    "kubetune_optuna_ask_duration_seconds": "histogram",
    "kubetune_job_launch_latency_seconds": "histogram",
    "kubetune_report_requests_total": "counter",
    "kubetune_studies": "gauge",
    "kubetune_storage_up": "gauge",
    "kubetune_study_last_progress_timestamp_seconds": "gauge",
    "kubetune_build_info": "gauge",
}


def test_a_fresh_registry_declares_every_metric_with_its_type(registry: CollectorRegistry) -> None:
    OperatorMetrics(registry)
    text = generate_latest(registry).decode()
    declared = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        declared[name] = family.type
    assert {name: declared.get(name) for name in REQUIRED} == REQUIRED


def test_nothing_lands_in_the_global_registry(metrics: OperatorMetrics) -> None:
    metrics.trial_finished(NS, STUDY, "COMPLETE", duration_seconds=1)
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("kubetune_")]


def test_build_info_carries_the_version(registry: CollectorRegistry) -> None:
    OperatorMetrics(registry, version="9.9.9")
    (labels,) = series(registry, "kubetune_build_info")
    assert labels["version"] == "9.9.9"
    assert set(labels) == {"version", "python_version", "optuna_version"}


def test_observe_study_sets_every_ledger_gauge(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    observe(metrics)
    study = {"namespace": NS, "study": STUDY}
    trials = {s: value(registry, "kubetune_study_trials", **study, state=s) for s in LEDGER_STATES}
    assert trials == {
        "COMPLETE": 3, "PRUNED": 2, "FAIL": 1, "RUNNING": 2, "WAITING": 0, "RETRIED": 0,
    }  # fmt: skip
    assert value(registry, "kubetune_trials_running", **study) == 2
    assert value(registry, "kubetune_study_parallelism", **study) == 4
    assert value(registry, "kubetune_study_best_value", **study, objective="val_accuracy") == 0.97
    assert value(registry, "kubetune_study_gpu_seconds", **study) == 3600
    assert value(registry, "kubetune_study_gpu_seconds_saved_by_pruning", **study) == 1200
    last = value(registry, "kubetune_study_last_progress_timestamp_seconds", **study)
    assert last == 1_700_000_000
    assert value(registry, "kubetune_studies", namespace=NS, condition="Running") == 1
    # Outcome counters exist at zero before the first outcome, so increase() sees it.
    assert value(registry, "kubetune_trials_total", **study, state="PRUNED") == 0


def test_observe_study_twice_changes_nothing(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    observe(metrics)
    first = samples(registry)
    observe(metrics)
    assert samples(registry) == first


def test_a_restarted_process_reports_the_same_ledger_numbers() -> None:
    """Ledger gauges come back identical after a restart; process counters start over."""
    before, after = CollectorRegistry(), CollectorRegistry()
    old = OperatorMetrics(before)
    old.trial_finished(NS, STUDY, "COMPLETE", duration_seconds=5)
    observe(old)
    observe(OperatorMetrics(after))
    labels = {"namespace": NS, "study": STUDY, "state": "COMPLETE"}
    assert value(after, "kubetune_study_trials", **labels) == 3
    assert value(before, "kubetune_study_trials", **labels) == 3
    assert value(after, "kubetune_trials_total", **labels) == 0


def test_best_values_follow_the_objectives(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    observe(metrics, best_values={"acc": 0.9, "latency": 12.0})
    observe(metrics, best_values={"acc": 0.95, "latency": float("nan")})
    assert {s["objective"] for s in series(registry, "kubetune_study_best_value")} == {"acc"}
    observe(metrics, best_values={})
    assert series(registry, "kubetune_study_best_value") == []


def test_trial_finished_counts_outcomes_durations_and_gpu_time(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    metrics.trial_finished(NS, STUDY, "COMPLETE", duration_seconds=90)
    metrics.gpu_settled(NS, STUDY, gpu_seconds=90)
    metrics.trial_finished(NS, STUDY, "pruned", duration_seconds=20)
    metrics.gpu_settled(NS, STUDY, gpu_seconds=20, saved_by_pruning=70)
    metrics.trial_retried(NS, STUDY)
    study = {"namespace": NS, "study": STUDY}
    for state, count in (("COMPLETE", 1), ("PRUNED", 1), ("FAIL", 0), ("RETRIED", 1)):
        assert value(registry, "kubetune_trials_total", **study, state=state) == count
    assert value(registry, "kubetune_trial_gpu_seconds_total", **study) == 110
    assert value(registry, "kubetune_gpu_seconds_saved_by_pruning_total", **study) == 70
    bucket = "kubetune_trial_duration_seconds_bucket"
    assert value(registry, bucket, namespace=NS, state="COMPLETE", le="60.0") == 0
    assert value(registry, bucket, namespace=NS, state="COMPLETE", le="120.0") == 1
    assert value(registry, bucket, namespace=NS, state="COMPLETE", le="604800.0") == 1


def test_labels_stay_bounded(metrics: OperatorMetrics, registry: CollectorRegistry) -> None:
    for number in range(50):
        metrics.trial_finished(NS, STUDY, "COMPLETE", duration_seconds=number)
        metrics.report_request("report", 200)
        metrics.job_launched(0.1)
    observe(metrics)
    names = {name for (_, labels) in samples(registry) for name, _ in labels}
    allowed = {"namespace", "study", "state", "objective", "condition", "route", "code",
               "reason", "le", "version", "python_version", "optuna_version"}  # fmt: skip
    assert names <= allowed
    assert len(series(registry, "kubetune_trials_total")) == 4


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.trial_finished(NS, STUDY, "COMPLETE", duration_seconds=-1), "duration"),
        (lambda m: m.gpu_settled(NS, STUDY, gpu_seconds=float("nan")), "gpu_seconds"),
        (lambda m: m.gpu_settled(NS, STUDY, gpu_seconds=1, saved_by_pruning=-2), "saved"),
        (lambda m: m.trial_finished(NS, STUDY, "EXPLODED", duration_seconds=1), "state"),
        (lambda m: m.trial_finished("", STUDY, "COMPLETE", duration_seconds=1), "namespace"),
        (lambda m: m.job_launched("soon"), "latency_seconds"),
        (lambda m: observe(m, running=-3), "running"),
        (lambda m: observe(m, trials={"COMPLETE": 1, "EXPLODED": 2}), "EXPLODED"),
        (lambda m: observe(m, best_values={"acc": "high"}), "acc"),
        (lambda m: m.record_progress(NS, None, 5.0), "study"),
    ],
)
def test_bad_values_are_dropped_and_logged_never_raised(
    metrics: OperatorMetrics,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    call: Callable[[OperatorMetrics], None],
    field: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="kubetune.metrics"):
        call(metrics)
    assert field in caplog.text
    values = samples(registry).values()
    assert all(math.isfinite(v) and v >= 0 for v in values)


def test_free_form_labels_are_bounded(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    metrics.reconcile_failed("StorageUnavailable")
    metrics.reconcile_failed("connection refused to 10.0.0.3:5432")
    metrics.report_request("report", 200)
    metrics.report_request("../../etc/passwd", 999)
    reasons = {s["reason"] for s in series(registry, "kubetune_reconcile_errors_total")}
    assert reasons == {"StorageUnavailable", "Other"}
    requests = {(s["route"], s["code"]) for s in series(registry, "kubetune_report_requests_total")}
    assert requests == {("report", "200"), ("other", "invalid")}


def test_studies_by_condition_follow_each_study(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    observe(metrics, "a")
    observe(metrics, "b")
    observe(metrics, "c", condition="Succeeded")
    assert value(registry, "kubetune_studies", namespace=NS, condition="Running") == 2
    observe(metrics, "a", condition="Succeeded")
    observe(metrics, "b", condition="Succeeded")
    assert value(registry, "kubetune_studies", namespace=NS, condition="Succeeded") == 3
    assert value(registry, "kubetune_studies", namespace=NS, condition="Running") is None


def test_progress_only_moves_forward(metrics: OperatorMetrics, registry: CollectorRegistry) -> None:
    metrics.record_progress(NS, STUDY, 2000.0)
    observe(metrics, last_progress=1000.0)  # an older ledger timestamp
    labels = {"namespace": NS, "study": STUDY}
    assert value(registry, "kubetune_study_last_progress_timestamp_seconds", **labels) == 2000


def test_forget_study_drops_its_series_and_keeps_the_others(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    for name in ("gone", "kept"):
        observe(metrics, name)
        metrics.trial_finished(NS, name, "PRUNED", duration_seconds=3)
        metrics.gpu_settled(NS, name, gpu_seconds=3, saved_by_pruning=9)
    metrics.forget_study(NS, "gone")
    studies = {labels.get("study") for (_, labels_set) in samples(registry)
               for labels in [dict(labels_set)]}  # fmt: skip
    assert "gone" not in studies
    assert "kept" in studies
    assert value(registry, "kubetune_studies", namespace=NS, condition="Running") == 1
    metrics.forget_study(NS, "never-existed")  # harmless


def test_durations_land_in_their_histograms(registry: CollectorRegistry) -> None:
    metrics = OperatorMetrics(registry)
    metrics.observe_ask(0.25)
    metrics.observe_reconcile(2.5)
    metrics.observe_reconcile(-1)  # dropped (logged), never a negative observation
    assert value(registry, "kubetune_optuna_ask_duration_seconds_sum") == 0.25
    assert value(registry, "kubetune_reconcile_duration_seconds_sum") == 2.5
    assert value(registry, "kubetune_reconcile_duration_seconds_bucket", le="2.5") == 1
    assert value(registry, "kubetune_reconcile_duration_seconds_bucket", le="1.0") == 0


def test_storage_up_reflects_the_last_call(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    metrics.storage_reachable(True)
    assert value(registry, "kubetune_storage_up") == 1
    metrics.storage_reachable(False)
    assert value(registry, "kubetune_storage_up") == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_aiohttp_handler_serves_the_registry(
    metrics: OperatorMetrics, registry: CollectorRegistry
) -> None:
    metrics.trial_retried(NS, STUDY)

    async def scrape() -> tuple[int, str, str]:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(registry))
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with (
                ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                return response.status, response.headers["Content-Type"], await response.text()
        finally:
            await runner.cleanup()

    status, content_type, text = asyncio.run(scrape())
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'kubetune_trials_total{namespace="ml",state="RETRIED",study="digits"} 1.0' in text


def test_metrics_app_serves_the_registry(registry: CollectorRegistry) -> None:
    OperatorMetrics(registry, version="9.9.9")
    assert any(r.resource and r.resource.canonical == "/metrics"
               for r in metrics_app(registry).router.routes())  # fmt: skip
    assert 'version="9.9.9"' in render(registry).decode()
