"""Issue 7 end to end: a real Prometheus scrapes the RUNNING operator while a study runs.

The operator (real kopf, emulated API, fake kubelet, real PostgreSQL) serves ``/metrics``; the
scenario also causes what the error panels show on a bad day: one report request with a bad
token (401), one failing trial, and one reconcile error (the API answers 500 to a status patch).
Then every dashboard query must return a series, every alert expression must evaluate, and
every metric the dashboard names must be in the operator's own output.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import prometheus_harness as harness
import pytest
from operator_fixtures import (
    by_state,
    curve_trainer_file,
    operator_env,
    optuna_trials,
    run_operator_thread,
    study_manifest,
    wait_state,
)

from harness import Cluster
from harness.postgres import free_port
from support.hold import WAIT_SECONDS

NS = "default"


def _bad_token_report(report_port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{report_port}/v1/namespaces/{NS}/studies/watched/trials/0/report",
        data=json.dumps({"step": 0, "value": 0.5}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer 0.deadbeef"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.slow
def test_prometheus_scrapes_the_running_operator_and_every_panel_has_data(
    cluster: Cluster, fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_port, report_port = free_port(), free_port()
    for key, value in operator_env(fresh_database).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(metrics_port))
    monkeypatch.setenv("KUBETUNE_REPORT_PORT", str(report_port))
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    manifest = study_manifest(
        "watched",
        curve_trainer_file(tmp_path),
        max_trials=5,
        parallelism=2,
        max_failed=3,
        extra_env={"STEPS": "3", "STEP_SECONDS": "0.2", "FAIL_TRIALS": "2"},
    )
    manifest["spec"]["pruner"] = {"type": "Threshold", "lower": 0.75, "nWarmupSteps": 0}
    manifest["spec"]["enqueueTrials"] = [
        {"lr": 0.01, "optimizer": "sgd"},
        {"lr": 1.0e-4, "optimizer": "sgd"},  # pruned at its first report
        {"lr": 0.02, "optimizer": "adamw"},  # trial 2: its trainer exits 3
        {"lr": 0.05, "optimizer": "adamw"},
        {"lr": 0.005, "optimizer": "sgd"},
    ]
    dashboard = harness.load_dashboard()
    with (
        run_operator_thread() as runner,
        harness.running_prometheus(metrics_url, tmp_path / "prom", [harness.RULES]) as prom,
    ):
        prom.wait_for_samples(2)
        # One reconcile pass fails: the API answers 500 to the first status patch.
        cluster.api.faults.add(path=r"/status$", verbs=("patch",), status=500, times=1)
        cluster.api.create("tuningstudies", manifest, NS)
        assert _bad_token_report(report_port) == 401
        final = wait_state(cluster, "watched", "Succeeded")
        trials = optuna_trials(fresh_database, final)
        prom.wait_until(
            "the final counts to be scraped",
            lambda: (
                [
                    s
                    for s in prom.query('kubetune_study_trials{study="watched",state="COMPLETE"}')
                    if float(s["value"][1]) == by_state(trials).get("COMPLETE")
                ]
                and prom.query('kubetune_trials_total{state="PRUNED"}')
            ),
        )
        prom.wait_for_samples(3)
        problems = {
            label: harness.dashboard_query_problems(prom, dashboard, variables)
            for label, variables in (
                ("study", {"namespace": NS, "study": "watched"}),
                ("all", {"namespace": ".*", "study": ".*"}),
            )
        }
        variable_problems = harness.variable_problems(prom, dashboard)
        rule_errors = []
        for name, expr in harness.rule_queries(harness.load_rules()):
            try:
                prom.query(expr)
            except harness.PrometheusError as error:
                rule_errors.append(f"{name}: {error}")
        prom.wait_until(
            "every rule to be evaluated",
            lambda: all(
                rule["health"] == "ok"
                for group in prom.api("rules")["groups"]
                for rule in group["rules"]
            ),
        )
        scraped_errors = prom.query('kubetune_report_requests_total{code="401"}')
        reconcile_errors = prom.query("kubetune_reconcile_errors_total")
        exposed = harness.fetch_exposed_names(metrics_url)
    assert runner.exit_code == 0, runner.output[-3000:]

    assert by_state(trials) == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 1}
    assert problems == {"study": [], "all": []}
    assert variable_problems == []
    assert rule_errors == []
    assert [float(s["value"][1]) for s in scraped_errors] == [1.0]
    assert reconcile_errors and float(reconcile_errors[0]["value"][1]) >= 1
    used = harness.metric_names_of_dashboard(dashboard)
    assert {"kubetune_job_launch_latency_seconds_bucket", "kubetune_study_best_value"} <= used
    assert harness.missing_metric_names(used, exposed) == set()
