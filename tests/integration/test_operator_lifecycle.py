"""How a study ends and what it says when it cannot go on, on the real control plane.

Real kube-apiserver, controller-manager (the Job controller suspends, resumes and fails Jobs)
and kopf; trial pods are real processes run by the kubelet stand-in; the ledger is a real
PostgreSQL. Each scenario asserts on the state of the world: the study's status and Events,
its Jobs, the trials in the database.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from operator_fixtures import (
    by_state,
    condition,
    events,
    jobs,
    optuna_trials,
    run_operator_thread,
    status,
    study_manifest,
    trainer_file,
    wait_state,
)

from harness import Cluster
from kubetune.cli import main
from kubetune.ledger import stored_usage

NS = "default"


def reasons_of(cluster: Cluster, name: str, namespace: str = NS) -> list[str]:
    return [str(e["reason"]) for e in events(cluster, name, namespace)]


# --- item 4: errors become conditions ---------------------------------------------------------


def test_a_study_whose_reconcile_raises_says_so_and_backs_off_while_others_run(
    cluster: Cluster, operator_env_vars: str, postgres_password: str, tmp_path: Path
) -> None:
    trainer = trainer_file(tmp_path)
    cluster.api.ensure_namespace("victim")
    # Every Job create in the victim's namespace fails: its reconcile raises on each pass.
    fault = cluster.api.faults.add(path=r"/namespaces/victim/jobs$", verbs=("create",), status=500)
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", study_manifest("victim", trainer), "victim")
        cluster.api.create("tuningstudies", study_manifest("bystander", trainer), NS)
        bystander = wait_state(cluster, "bystander", "Succeeded")
        cluster.api.wait_for(
            lambda: (
                "3 times in a row"
                in condition(cluster, "victim", "Reconciled", "victim").get("message", "")
            ),
            message="the victim's condition never counted 3 failures",
        )
        broken = condition(cluster, "victim", "Reconciled", "victim")
        ready = condition(cluster, "victim", "Ready", "victim")
        # The Event is posted once per error text, not once per retry.
        cluster.api.wait_for(lambda: "ReconcileError" in reasons_of(cluster, "victim", "victim"))
        error_events = [
            e for e in events(cluster, "victim", "victim") if e["reason"] == "ReconcileError"
        ]
        failed_passes = fault.hits
        cluster.api.faults.remove(fault)
        final = wait_state(cluster, "victim", "Succeeded", "victim")
    assert runner.exit_code == 0, runner.output[-3000:]

    assert bystander["trials"]["completed"] == 4
    assert broken["status"] == "False" and broken["reason"] == "ReconcileError"
    assert "(500) Internal Server Error" in broken["message"]
    assert "injected by the test proxy" in broken["message"]
    assert "next try in" in broken["message"]
    assert ready["status"] == "False" and ready["reason"] == "ReconcileError"
    (event,) = error_events
    assert event["type"] == "Warning" and "injected by the test proxy" in event["message"]
    # Backoff: 2 s, 4 s, 8 s ... not one attempt per resync (2 s here) or per watch event.
    assert failed_passes <= 5, failed_passes
    assert postgres_password not in str(broken) + str(error_events)
    # It recovered: the condition says so, and no trial was asked twice for the failures.
    assert condition(cluster, "victim", "Reconciled", "victim")["status"] == "True"
    assert condition(cluster, "victim", "Reconciled", "victim")["reason"] == "ReconcileSucceeded"
    assert by_state(optuna_trials(operator_env_vars, final)) == {"COMPLETE": 4}
    assert final["trials"]["total"] == 4


def _gp(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"]["sampler"] = {"type": "GP", "seed": 1}
    return manifest


def test_gp_without_torch_is_invalid_with_a_clear_condition_while_others_run(
    cluster: Cluster,
    operator_env_vars: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The operator image has no torch; here it is installed, so hide it from the operator
    # (kopf runs in this process) the way Python itself marks a module as missing.
    monkeypatch.setitem(sys.modules, "torch", None)
    trainer = trainer_file(tmp_path)
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", _gp(study_manifest("gp", trainer)), NS)
        cluster.api.create("tuningstudies", study_manifest("bystander", trainer), NS)
        invalid = wait_state(cluster, "gp", "Invalid")
        cluster.api.wait_for(lambda: "SamplerUnavailable" in reasons_of(cluster, "gp"))
        bystander = wait_state(cluster, "bystander", "Succeeded")
    assert runner.exit_code == 0, runner.output[-3000:]

    assert bystander["trials"]["completed"] == 4
    cond = condition(cluster, "gp", "Invalid")
    assert cond["status"] == "True" and cond["reason"] == "SamplerUnavailable"
    assert cond["message"].startswith("the GP sampler needs PyTorch in the operator image")
    assert "1.13 GB" in cond["message"]
    assert invalid["message"] == cond["message"]
    assert reasons_of(cluster, "gp").count("SamplerUnavailable") == 1
    assert jobs(cluster, "gp") == []
    assert "optunaStudyName" not in status(cluster, "gp")
    assert "Reconcile failed" not in runner.output


# --- item 5: grid exhaustion -------------------------------------------------------------------


def test_a_grid_study_ends_when_every_point_was_tried(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    manifest = study_manifest("grid", trainer_file(tmp_path), max_trials=10, parallelism=3)
    manifest["spec"]["searchSpace"] = [
        {"name": "lr", "categorical": {"choices": [0.01, 0.1]}},
        {"name": "optimizer", "categorical": {"choices": ["sgd", "adamw"]}},
    ]
    manifest["spec"]["sampler"] = {"type": "Grid", "seed": 1}
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "grid", "Succeeded")
    assert runner.exit_code == 0, runner.output[-3000:]

    succeeded = condition(cluster, "grid", "Succeeded")
    assert succeeded["reason"] == "SearchSpaceExhausted"
    assert "every point of the grid was tried (4 trials; maxTrials: 10)" in succeeded["message"]
    assert final["progress"] == "4/4"
    trials = optuna_trials(operator_env_vars, final)
    assert by_state(trials) == {"COMPLETE": 4}
    assert sorted((t.params["lr"], t.params["optimizer"]) for t in trials) == [
        (0.01, "adamw"), (0.01, "sgd"), (0.1, "adamw"), (0.1, "sgd"),
    ]  # fmt: skip
    assert len(jobs(cluster, "grid")) == 4


# --- item 2: a study that stops, stops its trials ----------------------------------------------


def test_a_study_over_its_gpu_budget_stops_its_running_trials_and_counts_them(
    cluster: Cluster,
    operator_env_vars: str,
    postgres_password: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = study_manifest(
        "budget",
        trainer_file(tmp_path),
        mode="wait",
        max_trials=4,
        parallelism=2,
        extra_env={"GO_FILE": str(tmp_path / "never")},
    )
    manifest["spec"]["budget"]["maxGpuSeconds"] = 6
    container = manifest["spec"]["trial"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "budget", "Failed")
        cluster.api.wait_for(lambda: "TrialsStopped" in reasons_of(cluster, "budget"))
        cluster.api.wait_for(lambda: jobs(cluster, "budget") == [], message="Jobs left")
        cluster.api.wait_for(lambda: cluster.kubelet.running_processes() == 0)
    assert runner.exit_code == 0, runner.output[-3000:]

    failed = condition(cluster, "budget", "Failed")
    assert failed["reason"] == "GpuBudgetExhausted"
    trials = optuna_trials(operator_env_vars, final)
    assert by_state(trials) == {"FAIL": 2}
    for t in trials:
        assert t.user_attrs["kubetune:fail_reason"] == "StudyStopped"
        assert "GpuBudgetExhausted" in t.user_attrs["kubetune:fail_message"]
    # The stopped trials' GPU time is settled in the ledger, and the status shows it.
    study = optuna.load_study(study_name=final["optunaStudyName"], storage=operator_env_vars)
    usage = stored_usage(study.user_attrs)
    assert sorted(usage) == [0, 1]
    assert all(u.gpu_seconds > 0 for u in usage.values())
    assert final["gpuSeconds"]["used"] >= 6
    assert final["gpuSeconds"]["used"] == pytest.approx(
        sum(u.gpu_seconds for u in usage.values()), 0.01
    )
    assert reasons_of(cluster, "budget").count("TrialsStopped") == 1
    assert "TrialFailed" not in reasons_of(cluster, "budget")  # one Event, not one per trial

    # `kubetune status` reads the same story from the PostgreSQL ledger (item 9).
    capsys.readouterr()
    assert main(["status", "default/budget", "--storage", operator_env_vars]) == 0
    out = capsys.readouterr().out
    assert f"Study:        {final['optunaStudyName']}  (TuningStudy default/budget)" in out
    assert "2 total: 0 running, 0 complete, 0 pruned, 2 failed" in out
    assert f"GPU-seconds:  {sum(u.gpu_seconds for u in usage.values()):.1f} used" in out
    rows = out.split("Last 2 trials:\n")[1].splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["0", "FAIL"], ["1", "FAIL"]]
    assert all("StudyStopped" in r for r in rows)
    assert postgres_password not in out


def test_suspend_suspends_the_running_jobs_and_resume_runs_them_again(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    manifest = study_manifest(
        "pause",
        trainer_file(tmp_path),
        mode="wait",
        max_trials=2,
        parallelism=2,
        extra_env={"GO_FILE": str(go)},
    )

    def suspended_jobs() -> list[bool]:
        return [bool(j["spec"].get("suspend")) for j in jobs(cluster, "pause")]

    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        cluster.api.wait_for(
            lambda: cluster.kubelet.active_pod("pause-0") and cluster.kubelet.active_pod("pause-1"),
            message="the trial pods never ran",
        )
        cluster.api.patch("tuningstudies", "pause", {"spec": {"suspend": True}}, NS)
        paused = wait_state(cluster, "pause", "Suspended")
        cluster.api.wait_for(lambda: suspended_jobs() == [True, True], message="not suspended")
        # The Job controller deleted the pods: nothing runs, yet no trial failed.
        cluster.api.wait_for(lambda: cluster.kubelet.running_processes() == 0)
        during = by_state(optuna_trials(operator_env_vars, status(cluster, "pause")))
        cluster.api.patch("tuningstudies", "pause", {"spec": {"suspend": False}}, NS)
        cluster.api.wait_for(lambda: suspended_jobs() == [False, False], message="not resumed")
        cluster.api.wait_for(
            lambda: cluster.kubelet.active_pod("pause-0") and cluster.kubelet.active_pod("pause-1"),
            message="the resumed Jobs never ran a pod again",
        )
        go.touch()
        final = wait_state(cluster, "pause", "Succeeded")
    assert runner.exit_code == 0, runner.output[-3000:]

    assert paused["trials"]["running"] == 2
    assert condition(cluster, "pause", "Suspended")["status"] == "False"
    assert during == {"RUNNING": 2}
    assert final["trials"] == {
        "total": 2, "running": 0, "completed": 2, "pruned": 0, "failed": 0, "retried": 0,
    }  # fmt: skip
    assert by_state(optuna_trials(operator_env_vars, final)) == {"COMPLETE": 2}
    assert sorted(j["metadata"]["name"] for j in jobs(cluster, "pause")) == ["pause-0", "pause-1"]


# --- item 10: the objective's goal -------------------------------------------------------------

#: Reporter mode: lr below 0.001 holds (until the study stops it), any other lr completes at
#: once with the stand-in's value ``1 - |log10(lr) + 2| / 4`` (lr 0.01 gives 1.0).
GOAL_TRAINER = r"""
import json, math, os, time
from kubetune import trial
lr = float(json.loads(os.environ["KUBETUNE_PARAMS"])["lr"])
while lr < 0.001:
    time.sleep(0.1)
trial.complete(round(1.0 - abs(math.log10(lr) + 2.0) / 4.0, 6))
"""


def test_a_study_that_reaches_its_goal_ends_and_stops_its_running_trials(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    trainer = tmp_path / "goal_trainer.py"
    trainer.write_text(GOAL_TRAINER)
    manifest = study_manifest(
        "goal",
        trainer,
        max_trials=10,
        parallelism=2,
        enqueue=[{"lr": 1.0e-4, "optimizer": "sgd"}, {"lr": 0.01, "optimizer": "sgd"}],
    )
    manifest["spec"]["objectives"][0]["goal"] = 0.9
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "goal", "Succeeded")
        cluster.api.wait_for(lambda: "TrialsStopped" in reasons_of(cluster, "goal"))
        cluster.api.wait_for(lambda: cluster.kubelet.running_processes() == 0)
    assert runner.exit_code == 0, runner.output[-3000:]

    succeeded = condition(cluster, "goal", "Succeeded")
    assert succeeded["reason"] == "GoalReached"
    assert succeeded["message"] == "trial 1 reached the goal: val_accuracy 1 >= 0.9"
    assert final["bestTrial"]["number"] == 1
    trials = optuna_trials(operator_env_vars, final)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["kubetune:fail_reason"] == "StudyStopped"
    assert "GoalReached" in trials[0].user_attrs["kubetune:fail_message"]
    assert cluster.api.find("jobs", "goal-0", NS) is None  # stopped: deleted
    # `kubectl get ts` shows why it ended (printer columns from the generated CRD).
    table = cluster.plane.kubectl("get", "ts", "goal", "-n", NS)
    header, row = table.splitlines()
    assert header.split() == ["NAME", "STATE", "TRIALS", "RUNNING", "BEST", "REASON", "AGE"]
    assert row.split()[:6] == ["goal", "Succeeded", "2/10", "0", "1", "GoalReached"]
