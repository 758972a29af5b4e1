"""A real Prometheus scrapes kubetune's metrics, driven by a real Optuna study.

The study (SQLite in tmp, median pruner) runs trials the way the operator drives them: ask,
report intermediate values, prune or tell, and after each step a "reconcile" that feeds the
ledger into :class:`kubetune.metrics.OperatorMetrics`. Prometheus scrapes the aiohttp handler;
then every dashboard query and every alert expression must evaluate, every dashboard query must
return data, and the scraped numbers must equal the ledger's.

The checks evaluate their queries at the instant the scenario was ready (``Scenario.at``), not
at "now": on a slow machine the tests run minutes later, and a ``[1m]`` window would by then
have slid past the activity it is meant to see.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import prometheus_harness as harness  # tests/integration is on sys.path (no __init__.py)
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from kubetune.metrics import OperatorMetrics, metrics_handler

NAMESPACE = "ml-team"
STUDY = "digits-cnn"
OBJECTIVE = "val_accuracy"
STEPS = 6

TrialState = optuna.trial.TrialState


@dataclass
class Scenario:
    prom: harness.Prometheus
    metrics_url: str
    study: optuna.Study
    metrics: OperatorMetrics
    at: float  # Unix time when every scrape the checks need had landed


def _curve(params: dict[str, Any], step: int) -> float:
    """A learning curve whose height depends on the parameters (deterministic)."""
    lr, dropout = float(params["lr"]), float(params["dropout"])
    height = 0.95 - abs(math.log10(lr) + 2.0) * 0.15 - dropout * 0.2
    return height * (1.0 - math.exp(-(step + 1) / 2.0))


def _reconcile(metrics: OperatorMetrics, study: optuna.Study, retries: int) -> None:
    """What the operator's reconcile does with the ledger: recompute the study's gauges."""
    started = time.perf_counter()
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name] += 1
    counts["RETRIED"] = retries
    done = [t for t in trials if t.datetime_complete is not None]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    used = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    saved = sum(float(t.user_attrs.get("gpu_seconds_saved", 0.0)) for t in done)
    stamps = [
        stamp.timestamp()
        for t in trials
        for stamp in (t.datetime_start, t.datetime_complete)
        if stamp is not None
    ]
    metrics.observe_study(
        NAMESPACE,
        STUDY,
        trials=counts,
        running=counts["RUNNING"],
        parallelism=2,
        best_values={OBJECTIVE: study.best_value} if complete else {},
        gpu_seconds=used,
        gpu_seconds_saved=saved,
        condition="Running",
        last_progress=max(stamps, default=None),
    )
    metrics.storage_reachable(True)
    metrics.observe_reconcile(time.perf_counter() - started)


def _run_trial(metrics: OperatorMetrics, study: optuna.Study, *, fail: bool = False) -> None:
    """One trial as operator + trainer see it: ask, launch, reports, and the outcome."""
    slot_free = time.perf_counter()
    asked = time.perf_counter()
    trial = study.ask()
    params = {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }
    metrics.observe_ask(time.perf_counter() - asked)
    metrics.job_launched(time.perf_counter() - slot_free)
    state = TrialState.COMPLETE
    value = 0.0
    last_step = STEPS - 1
    for step in range(STEPS):
        value = _curve(params, step)
        trial.report(value, step)
        metrics.report_request("report", 200)
        metrics.record_progress(NAMESPACE, STUDY, time.time())
        if trial.should_prune():
            state, last_step = TrialState.PRUNED, step
            break
    if fail:
        state = TrialState.FAIL
    assert trial.datetime_start is not None
    elapsed = max(time.time() - trial.datetime_start.timestamp(), 0.0)
    saved = elapsed * (STEPS - 1 - last_step) / (last_step + 1) if state == TrialState.PRUNED else 0
    trial.set_user_attr("gpu_seconds_saved", saved)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
        metrics.report_request("complete", 200)
    elif state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
        metrics.report_request("prune", 200)
    else:
        study.tell(trial, state=TrialState.FAIL)
        metrics.report_request("fail", 200)
    metrics.trial_finished(NAMESPACE, STUDY, state.name, duration_seconds=elapsed)
    metrics.gpu_settled(NAMESPACE, STUDY, gpu_seconds=elapsed, saved_by_pruning=saved)


def _activity(metrics: OperatorMetrics, study: optuna.Study, trials: int, retries: int) -> None:
    for number in range(trials):
        _run_trial(metrics, study, fail=number == 3)
        _reconcile(metrics, study, retries)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("prometheus")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp / 'ledger.db'}",
        study_name=f"{NAMESPACE}.{STUDY}",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=7),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.storage_reachable(False)  # the operator starts before it has reached the storage
    _activity(metrics, study, trials=6, retries=0)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    with harness.serve_app(app) as base_url:
        metrics_url = f"{base_url}/metrics"
        with harness.running_prometheus(metrics_url, tmp / "prom", [harness.RULES]) as prom:
            prom.wait_for_samples(3)
            # Second phase while Prometheus watches, so rate() and increase() see changes.
            broken = f"sqlite:///{tmp / 'missing-dir' / 'ledger.db'}"
            try:
                optuna.load_study(study_name=study.study_name, storage=broken)
            except Exception:  # the real failure a lost database gives
                metrics.reconcile_failed("StorageUnavailable")
                metrics.storage_reachable(False)
            metrics.report_request("report", 401)  # a trainer with a stale token
            metrics.trial_retried(NAMESPACE, STUDY)
            _activity(metrics, study, trials=6, retries=1)
            prom.wait_for_scrape_after(time.time())  # the last reconcile is in Prometheus
            prom.wait_for_samples(5)
            yield Scenario(prom, metrics_url, study, metrics, at=time.time())


VARIABLE_SETS = [{"namespace": NAMESPACE, "study": STUDY}, {"namespace": ".*", "study": ".*"}]


@pytest.mark.slow
@pytest.mark.parametrize("variables", VARIABLE_SETS, ids=["real-values", "all"])
def test_every_dashboard_query_evaluates_and_returns_data(
    scenario: Scenario, variables: dict[str, str]
) -> None:
    dashboard = harness.load_dashboard()
    assert len(harness.dashboard_queries(dashboard)) >= 20
    assert harness.dashboard_query_problems(scenario.prom, dashboard, variables, scenario.at) == []


@pytest.mark.slow
def test_dashboard_variables_resolve_to_the_study(scenario: Scenario) -> None:
    dashboard = harness.load_dashboard()
    assert harness.variable_problems(scenario.prom, dashboard) == []
    assert scenario.prom.api("label/study/values") == [STUDY]


@pytest.mark.slow
def test_every_dashboard_metric_is_in_the_scrape(scenario: Scenario) -> None:
    used = harness.metric_names_of_dashboard(harness.load_dashboard())
    assert "kubetune_study_best_value" in used
    exposed = harness.fetch_exposed_names(scenario.metrics_url)
    assert harness.missing_metric_names(used, exposed) == set()


@pytest.mark.slow
def test_every_rule_expression_evaluates_and_prometheus_loaded_the_rules(
    scenario: Scenario,
) -> None:
    rules = harness.rule_queries(harness.load_rules())
    assert {name for name, _ in rules} >= {
        "KubetuneOperatorDown",
        "KubetuneOperatorAbsent",
        "KubetuneReconcileErrors",
        "KubetuneStorageDown",
        "KubetuneStudyStalled",
    }
    for name, expr in rules:
        try:
            scenario.prom.query(expr)
        except harness.PrometheusError as error:
            pytest.fail(f"{name}: {error}")
    scenario.prom.wait_until(
        "every rule to be evaluated",
        lambda: all(
            rule["health"] == "ok"
            for group in scenario.prom.api("rules")["groups"]
            for rule in group["rules"]
        ),
    )
    loaded = [r["name"] for g in scenario.prom.api("rules")["groups"] for r in g["rules"]]
    assert sorted(loaded) == sorted(name for name, _ in rules)


def _value(prom: harness.Prometheus, expr: str, at: float) -> float:
    result = prom.query(expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


@pytest.mark.slow
def test_scraped_numbers_equal_the_optuna_ledger(scenario: Scenario) -> None:
    prom, study, at = scenario.prom, scenario.study, scenario.at
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        in_ledger = len(study.get_trials(states=(state,)))
        scraped = _value(prom, f'kubetune_study_trials{{study="{STUDY}",state="{state.name}"}}', at)
        assert scraped == in_ledger, state
        # The process counter saw every outcome, since all happened in this process.
        counted = _value(prom, f'kubetune_trials_total{{study="{STUDY}",state="{state.name}"}}', at)
        assert counted == in_ledger, state
    assert _value(prom, 'sum(kubetune_study_trials{state="PRUNED"})', at) > 0
    assert _value(
        prom, f'kubetune_study_best_value{{objective="{OBJECTIVE}"}}', at
    ) == pytest.approx(study.best_value)
    assert _value(prom, 'kubetune_trials_total{state="RETRIED"}', at) == 1
    assert _value(prom, "kubetune_storage_up", at) == 1
    assert _value(prom, 'kubetune_reconcile_errors_total{reason="StorageUnavailable"}', at) == 1
    assert _value(prom, "sum(kubetune_trial_duration_seconds_count)", at) == len(study.trials)
    # increase() over the second phase sees the outcomes recorded while Prometheus watched.
    assert _value(prom, "sum(increase(kubetune_trials_total[1m]))", at) > 0


def test_promtool_checks_the_rules() -> None:
    result = harness.promtool("check", "rules", str(harness.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = harness.promtool("test", "rules", str(harness.RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_cover_every_alert() -> None:
    import yaml

    tests = yaml.safe_load(harness.RULES_TEST.read_text(encoding="utf-8"))["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for name, _ in harness.rule_queries(harness.load_rules()):
        mine = [check for check in checks if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in mine), f"{name} never shown firing"
        assert any(not check["exp_alerts"] for check in mine), f"{name} never shown silent"


def test_dashboard_structure() -> None:
    dashboard = harness.load_dashboard()
    assert harness.structure_problems(dashboard) == []
    titles = {title for title, _ in harness.dashboard_queries(dashboard)}
    assert len(titles) >= 14


def test_dashboard_structure_check_catches_breakage() -> None:
    dashboard = harness.load_dashboard()
    dashboard["schemaVersion"] = 30
    dashboard["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prom-1"}
    dashboard["panels"][2]["targets"] = []
    del dashboard["panels"][3]["id"]
    problems = "\n".join(harness.structure_problems(dashboard))
    for expected in ("schemaVersion", "datasource must be", "no targets", "panel ids"):
        assert expected in problems


def test_dashboard_file_is_generated_from_monitoring_dashboard_py() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kubetune_dashboard", harness.REPO / "monitoring/dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert harness.DASHBOARD.read_text(encoding="utf-8") == module.render(), (
        "stale dashboard: run python monitoring/dashboard.py"
    )


def test_dashboard_uses_only_metrics_the_module_exports() -> None:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    OperatorMetrics(registry)
    exposed = harness.exposed_names(generate_latest(registry).decode())
    used = harness.metric_names_of_dashboard(harness.load_dashboard())
    used |= {
        n for _, e in harness.rule_queries(harness.load_rules()) for n in harness.metric_names(e)
    }
    assert harness.missing_metric_names(used - {"up"}, exposed) == set()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x=~"$y"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.9, b) / on (ns) group_left c offset 5m", {"b", "c"}),
        ("time() - d > 1e3 and on() e", {"d", "e"}),
    ],
)
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    assert harness.metric_names(expr) == names


def test_substitute_replaces_grafana_variables() -> None:
    expr = 'rate(x{ns=~"$namespace",s=~"${study}"}[$__rate_interval])'
    assert harness.substitute(expr, {"namespace": "a", "study": "b"}) == (
        'rate(x{ns=~"a",s=~"b"}[1m])'
    )


def test_config_points_prometheus_at_the_metrics_url(tmp_path: Path) -> None:
    import yaml

    path = harness.write_config(tmp_path, "http://10.1.2.3:8080/metrics", [harness.RULES])
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    scrape = config["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["10.1.2.3:8080"]
    assert scrape["metrics_path"] == "/metrics"
    assert config["global"]["scrape_interval"] == "1s"
