"""Issues 5 and 6 end to end: the shipped quickstart with the real PyTorch trainer, a pruned
study whose pods hold no database credentials, and an operator restart while trainers report.

Emulated API + fake kubelet (real trainer processes) + real kopf + real PostgreSQL/Optuna; the
assertions are on the state of the world: the study's status, Events, Jobs, Pods, the database
and the operator's metrics.
"""

from __future__ import annotations

import copy
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_fixtures import (
    by_state,
    condition,
    curve_trainer_file,
    events,
    jobs,
    operator_env,
    operator_process_on,
    optuna_trials,
    run_operator_thread,
    stored_pod_envs,
    study_manifest,
    wait_state,
)

from harness import Cluster
from harness.postgres import free_port
from support.hold import WAIT_SECONDS

NS = "default"
REPO = Path(__file__).resolve().parents[2]
TOKEN_KEY = operator_env("x")["KUBETUNE_TOKEN_KEY"]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=WAIT_SECONDS
    ) as response:
        return str(response.read().decode())


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition ``text`` whose labels include ``labels``."""
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def _quickstart(max_trials: int = 6) -> dict[str, Any]:
    manifest = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
    manifest = copy.deepcopy(manifest)
    spec = manifest["spec"]
    spec["budget"].update({"maxTrials": max_trials, "parallelism": 2})
    (container,) = spec["trial"]["template"]["spec"]["containers"]
    container["args"] = [
        "--epochs=4" if a.startswith("--epochs=") else a for a in container["args"]
    ]
    return dict(manifest)


def test_quickstart_with_the_real_trainer_status_events_database_agree(
    cluster: Cluster, operator_env_vars: str
) -> None:
    """Issue 5: the shipped example, shrunk, runs to Succeeded with the real CPU trainer."""
    db = operator_env_vars
    manifest = _quickstart()
    spec = manifest["spec"]
    assert spec["pruner"]["type"] == "Median" and spec["trial"]["result"]["from"] == "Reporter"
    assert "--epochs=4" in spec["trial"]["template"]["spec"]["containers"][0]["args"]
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "quickstart", "Succeeded")
        evs = cluster.api.wait_for(
            lambda: (
                [e for e in events(cluster, "quickstart") if e["reason"] == "StudySucceeded"]
                and events(cluster, "quickstart")
            ),
            message="no StudySucceeded Event",
        )
    assert runner.exit_code == 0, runner.output[-3000:]
    assert cluster.kubelet.errors == []

    trials = optuna_trials(db, final)
    states = by_state(trials)
    assert len(trials) == 6 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert final["trials"] == {
        "total": 6,
        "running": 0,
        "completed": states.get("COMPLETE", 0),
        "pruned": states.get("PRUNED", 0),
        "failed": 0,
        "retried": 0,
    }
    assert final["progress"] == "6/6"
    assert condition(cluster, "quickstart", "Succeeded")["reason"] == "MaxTrialsReached"
    # The warm start from the example ran first, with exactly its parameters.
    assert trials[0].params == {
        "lr": 0.05, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 1.0e-4, "dropout": 0.1,
    }  # fmt: skip
    # The real trainer reported one value per epoch through the report API.
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 4, (t.number, steps)
        if t.state.name == "COMPLETE":
            assert len(steps) == 4 and 0.0 < t.value <= 1.0
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert final["bestTrial"]["number"] == best.number
    assert final["bestTrial"]["values"] == [pytest.approx(best.value)]
    assert final["bestTrial"]["params"]["optimizer"] == best.params["optimizer"]
    assert float(final["bestTrial"]["params"]["lr"]) == pytest.approx(best.params["lr"])
    assert float(final["bestValue"]) == pytest.approx(best.value, rel=1e-5)

    # Events: one launch per trial, with the parameters the database holds; one success.
    reasons = [e["reason"] for e in evs]
    assert reasons.count("TrialLaunched") == 6 and reasons.count("StudySucceeded") == 1
    assert not {"TrialFailed", "TrialRetried", "InvalidSpec"} & set(reasons)
    launched = {
        int(m.group(1)): m.group(2)
        for e in evs
        if (m := re.match(r"Trial (\d+) launched with (.*)", e["message"]))
    }
    assert sorted(launched) == [t.number for t in trials]
    for t in trials:
        assert f"'optimizer': '{t.params['optimizer']}'" in launched[t.number]
    assert sorted(j["metadata"]["name"] for j in jobs(cluster, "quickstart")) == [
        f"quickstart-{n}" for n in range(6)
    ]


def _pruning_manifest(trainer: Path, *, max_trials: int = 4) -> dict[str, Any]:
    """Two good (lr=0.01, 0.02) and two poor (lr=1e-4, 0.9) warm starts; Threshold prunes the
    poor ones at their first report, deterministically."""
    enqueue = [
        {"lr": 0.01, "optimizer": "sgd"},
        {"lr": 1.0e-4, "optimizer": "sgd"},
        {"lr": 0.02, "optimizer": "adamw"},
        {"lr": 0.9, "optimizer": "adamw"},
    ][:max_trials]
    manifest = study_manifest(
        "pruned",
        trainer,
        max_trials=max_trials,
        parallelism=2,
        extra_env={"STEPS": "4", "STEP_SECONDS": "0.7"},
        enqueue=enqueue,
    )
    spec = manifest["spec"]
    spec["pruner"] = {"type": "Threshold", "lower": 0.75, "nWarmupSteps": 0}
    container = spec["trial"]["template"]["spec"]["containers"][0]
    # Quantities as strings: an int here crash-loops Job creation (the kubernetes client's
    # pydantic model refuses it; render_job should stringify quantities — reported).
    gpu = {"nvidia.com/gpu": "1"}
    container["resources"] = {"limits": gpu, "requests": gpu}
    return manifest


def test_pruned_study_in_the_cluster_with_no_credentials_in_pods(
    cluster: Cluster,
    operator_env_vars: str,
    postgres_password: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 6: pruning end to end; pods only hold their trial token and the report URL."""
    metrics_port = free_port()
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(metrics_port))
    manifest = _pruning_manifest(curve_trainer_file(tmp_path))
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "pruned", "Succeeded")
        scraped = cluster.api.wait_for(
            lambda: (
                text
                if _sample(text := _scrape(metrics_port), "kubetune_trials_total", state="PRUNED")
                == 2
                and _sample(text, "kubetune_trials_total", state="COMPLETE") == 2
                else None
            ),
            message="the operator never counted the reported outcomes",
        )
    assert runner.exit_code == 0, runner.output[-3000:]

    trials = optuna_trials(operator_env_vars, final)
    assert by_state(trials) == {"COMPLETE": 2, "PRUNED": 2}
    assert [t.number for t in trials if t.state.name == "PRUNED"] == [1, 3]
    for t in trials:
        expected = [0] if t.state.name == "PRUNED" else [0, 1, 2, 3]
        assert sorted(t.intermediate_values) == expected, t.number
    assert final["trials"] == {
        "total": 4, "running": 0, "completed": 2, "pruned": 2, "failed": 0, "retried": 0,
    }  # fmt: skip
    assert final["gpuSeconds"]["used"] > 0
    assert final["gpuSeconds"]["savedByPruning"] > 0

    # Every Job ended Complete on its first attempt: a pruned trial is not a failure.
    stored = jobs(cluster, "pruned")
    assert sorted(j["metadata"]["name"] for j in stored) == [f"pruned-{n}" for n in range(4)]
    for j in stored:
        conditions = {c["type"]: c["status"] for c in j["status"].get("conditions") or []}
        assert conditions.get("Complete") == "True" and "Failed" not in conditions, j["status"]

    # No storage URL, password or token key anywhere in a pod's environment.
    envs = stored_pod_envs(cluster, "pruned")
    assert any("KUBETUNE_TRIAL_TOKEN" in e for e in envs)
    text = "\n".join(envs)
    for secret in (postgres_password, TOKEN_KEY, "postgresql", "KUBETUNE_STORAGE_URL"):
        assert secret not in text, secret
    assert "KUBETUNE_TOKEN_KEY" not in text

    # Metrics: the ledger gauge and this process's counters agree with the database.
    assert _sample(scraped, "kubetune_study_trials", study="pruned", state="PRUNED") == 2
    assert _sample(scraped, "kubetune_study_trials", study="pruned", state="COMPLETE") == 2
    assert _sample(scraped, "kubetune_study_gpu_seconds", study="pruned") == pytest.approx(
        final["gpuSeconds"]["used"]
    )
    # Trials finished through the report API are counted with their real duration and GPU time.
    count = _sample(scraped, "kubetune_trial_duration_seconds_count", state="PRUNED")
    assert count == 2
    assert (_sample(scraped, "kubetune_trial_duration_seconds_sum", state="COMPLETE") or 0) > 0
    assert (_sample(scraped, "kubetune_trial_gpu_seconds_total", study="pruned") or 0) > 0
    assert (
        _sample(scraped, "kubetune_gpu_seconds_saved_by_pruning_total", study="pruned") or 0
    ) > 0
    assert (_sample(scraped, "kubetune_job_launch_latency_seconds_count") or 0) >= 4
    assert (_sample(scraped, "kubetune_optuna_ask_duration_seconds_count") or 0) >= 4
    assert _sample(scraped, "kubetune_report_requests_total", route="prune", code="200") == 2


def test_operator_restarted_while_trainers_report_loses_nothing(
    cluster: Cluster, fresh_database: str, tmp_path: Path
) -> None:
    """The report API goes away mid-trial; the SDK's retries carry the reports through."""
    progress = tmp_path / "progress"
    progress.mkdir()
    gate = tmp_path / "go"
    manifest = study_manifest(
        "restart",
        curve_trainer_file(tmp_path),
        max_trials=2,
        parallelism=2,
        enqueue=[{"lr": 0.01, "optimizer": "sgd"}, {"lr": 0.02, "optimizer": "adamw"}],
        extra_env={
            "STEPS": "4",
            "STEP_SECONDS": "0.05",
            "PROGRESS_DIR": str(progress),
            "GATE_FILE": str(gate),
            "GATE_AFTER_STEP": "1",
        },
    )
    report_port = free_port()
    first = operator_process_on(
        cluster, fresh_database, tmp_path / "op1.log", report_port=report_port
    ).start()
    try:
        cluster.api.create("tuningstudies", manifest, NS)
        cluster.api.wait_for(
            lambda: (progress / "0.1").exists() and (progress / "1.1").exists(),
            message="the trainers never reported step 1",
        )
    finally:
        first.kill()
    # The operator is gone: the trainers' next reports find nobody listening and retry.
    gate.touch()
    second = operator_process_on(
        cluster, fresh_database, tmp_path / "op2.log", report_port=report_port
    ).start()
    try:
        final = wait_state(cluster, "restart", "Succeeded")
    finally:
        second.stop()
    assert final["trials"] == {
        "total": 2, "running": 0, "completed": 2, "pruned": 0, "failed": 0, "retried": 0,
    }, second.output[-3000:]  # fmt: skip
    trials = optuna_trials(fresh_database, final)
    assert by_state(trials) == {"COMPLETE": 2}
    expected = {0: 1.0, 1: pytest.approx(1.0 - abs(-1.69897 + 2.0) / 4.0, abs=1e-5)}
    for t in trials:
        assert t.intermediate_values == {s: expected[t.number] for s in range(4)}, t.number
        assert t.value == expected[t.number]
        assert t.user_attrs["kubetune:attempt"] == 0
    assert sorted(p.name for p in progress.iterdir()) == [
        f"{n}.{s}" for n in range(2) for s in range(4)
    ]
    # One Job per trial, each Complete: the outage cost no retry and no extra trial.
    stored = jobs(cluster, "restart")
    assert sorted(j["metadata"]["name"] for j in stored) == ["restart-0", "restart-1"]
    for j in stored:
        assert j["status"].get("succeeded") == 1, j["status"]
