"""``kubetune run`` end to end: real trainer processes, real report API, real Optuna on SQLite.

Stub trainers (tiny Python scripts written to tmp_path) play crashing, hanging, NaN, garbage
and silent trainers; they start in a fraction of the real trainer's time.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

from kubetune.local import INTERRUPTED, STDERR_TAIL_ATTR, LocalRunError, run_local

STUB = textwrap.dedent(
    """
    import json, math, os, sys, time
    from pathlib import Path
    from kubetune import trial as kt

    mode = sys.argv[1].removeprefix("--mode=")
    Path(os.environ["STUB_DIR"], f"pid-{os.environ['KUBETUNE_TRIAL_NUMBER']}").write_text(
        str(os.getpid()))
    if mode == "ok":
        kt.report(0.5, step=0)
        kt.complete(float(kt.param("x", 0.5)))
    elif mode == "bad":  # reports low values: a Threshold pruner prunes it
        if kt.report(0.01, step=0):
            kt.pruned()
            sys.exit(0)
        kt.complete(0.01)
    elif mode == "crash":
        print("Traceback: boom in the trainer", file=sys.stderr)
        sys.exit(3)
    elif mode in ("hang", "wait"):
        if mode == "wait" and Path(os.environ["STUB_DIR"], "go").exists():
            kt.complete(0.9)
            sys.exit(0)
        print("hanging", flush=True)
        time.sleep(120)
    elif mode == "nan":
        kt.complete(float("nan"))
    elif mode == "silent":
        print("done, but told nobody")
    elif mode == "refuse":
        kt.fail("dataset is missing")
        sys.exit(1)
    elif mode == "garbage":
        Path(os.environ["KUBETUNE_TERMINATION_LOG"]).write_text("this is not json")
    elif mode == "rawnan":
        Path(os.environ["KUBETUNE_TERMINATION_LOG"]).write_text('{"values": [NaN]}')
    """
)


def manifest(
    tmp_path: Path,
    name: str,
    *,
    modes: list[str],
    enqueue: list[dict[str, Any]] | None = None,
    budget: dict[str, Any],
    pruner: dict[str, Any] | None = None,
    result: str = "Reporter",
    deadline: int | None = None,
    container: dict[str, Any] | None = None,
) -> Path:
    """A TuningStudy whose trainer is the stub, mode chosen by the categorical ``mode``."""
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    (tmp_path / "stub-dir").mkdir(exist_ok=True)
    trial: dict[str, Any] = {
        "result": {"from": result},
        "template": {
            "spec": {
                "containers": [
                    container
                    or {
                        "name": "trainer",
                        "image": "stub:1",
                        "command": ["python", str(stub)],
                        "args": ["--mode=$(KUBETUNE_PARAM_MODE)"],
                        "env": [{"name": "STUB_DIR", "value": str(tmp_path / "stub-dir")}],
                    }
                ]
            }
        },
    }
    if deadline is not None:
        trial["activeDeadlineSeconds"] = deadline
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objectives": [{"name": "val_accuracy", "direction": "maximize"}],
            "searchSpace": [
                {"name": "mode", "categorical": {"choices": modes}},
                {"name": "x", "float": {"low": 0.0, "high": 1.0}},
            ],
            "sampler": {"type": "Random", "seed": 1},
            "pruner": pruner or {"type": "None"},
            "budget": budget,
            "enqueueTrials": enqueue if enqueue is not None else [{"mode": m} for m in modes],
            "trial": trial,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def by_mode(storage: str, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return {t.params["mode"]: t for t in study.get_trials()}


def test_real_trainer_study_with_pruning_then_resume(tmp_path: Path) -> None:
    """Real trainer, 2 in parallel, Threshold pruner; a second run resumes up to maxTrials."""
    storage = f"sqlite:///{tmp_path}/real.db"
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "digits"},
        "spec": {
            "objectives": [{"name": "val_accuracy", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "float": {"low": 1.0e-6, "high": 0.05, "log": True}},
                {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.9},
                    "when": {"param": "optimizer", "in": ["sgd"]},
                },
            ],
            "sampler": {"type": "TPE", "seed": 3},
            # Chance is 0.1: a trial below 0.3 after its first epoch is pruned.
            "pruner": {"type": "Threshold", "lower": 0.3},
            "budget": {"maxTrials": 3, "parallelism": 2},
            "enqueueTrials": [
                {"lr": 1.0e-6, "optimizer": "sgd", "momentum": 0.0},
                {"lr": 0.01, "optimizer": "adam"},
                {"lr": 0.005, "optimizer": "adam"},
            ],
            "trial": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "trainer",
                                "image": "kubetune-trainer:0.1.0",
                                "command": ["python", "-m", "kubetune_trainer"],
                                "args": [
                                    "--epochs=3",
                                    "--warmup-epochs=0",
                                    "--hidden=32",
                                    "--lr=$(KUBETUNE_PARAM_LR)",
                                ],
                            }
                        ]
                    }
                }
            },
        },
    }
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(doc))
    console = quiet()
    result = run_local(path, storage=storage, console=console, log_dir=tmp_path / "logs")

    assert result.exit_code == 0, result
    assert (result.complete, result.pruned, result.failed) == (2, 1, 0)
    study = optuna.load_study(study_name="digits", storage=storage)
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert [t.params["lr"] for t in pruned] == [1.0e-6]
    assert list(pruned[0].intermediate_values) == [0]
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value > 0.8
            assert sorted(t.intermediate_values) == [0, 1, 2]
    assert result.best[0].values[0] == study.best_value
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Best trials" in text and storage in text
    assert "throughput samples/s" in (tmp_path / "logs" / "trial-1.out").read_text()

    again = run_local(
        path, storage=storage, max_trials=4, console=quiet(), log_dir=tmp_path / "logs"
    )
    assert again.exit_code == 0
    study = optuna.load_study(study_name="digits", storage=storage)
    assert len(study.get_trials()) == 4  # one new trial; warm starts were not enqueued twice
    assert study.get_trials()[3].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_bad_trainers_fail_with_reasons_and_the_study_goes_on(tmp_path: Path) -> None:
    modes = ["ok", "crash", "hang", "nan", "silent", "refuse"]
    storage = f"sqlite:///{tmp_path}/bad.db"
    path = manifest(
        tmp_path,
        "bad",
        modes=modes,
        deadline=2,
        budget={"maxTrials": len(modes), "parallelism": 3},
    )
    result = run_local(path, storage=storage, console=quiet(), log_dir=tmp_path / "logs")
    assert (result.complete, result.failed) == (1, 5)
    assert result.exit_code == 0
    trials = by_mode(storage, "bad")
    assert trials["ok"].state == TrialState.COMPLETE
    reason = {m: t.user_attrs.get("kubetune:fail_reason", "") for m, t in trials.items()}
    assert reason["crash"] == "ExitCode: trainer exited with code 3"
    assert "boom in the trainer" in trials["crash"].user_attrs[STDERR_TAIL_ATTR]
    assert (
        reason["hang"].startswith("DeadlineExceeded")
        and "activeDeadlineSeconds=2" in reason["hang"]
    )
    assert "hanging" in trials["hang"].user_attrs[STDERR_TAIL_ATTR]  # stdout when stderr is empty
    assert reason["nan"].startswith("ExitCode")
    assert "finite" in trials["nan"].user_attrs[STDERR_TAIL_ATTR]
    assert reason["silent"].startswith("NoResult")
    assert reason["refuse"] == "dataset is missing"  # the trainer's own reason, via the API
    hung_pid = int((tmp_path / "stub-dir" / f"pid-{trials['hang'].number}").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(hung_pid, 0)


def test_termination_message_mode(tmp_path: Path) -> None:
    modes = ["ok", "garbage", "rawnan", "crash"]
    storage = f"sqlite:///{tmp_path}/tm.db"
    enqueue = [{"mode": "ok", "x": 0.25}, *({"mode": m} for m in modes[1:])]
    path = manifest(
        tmp_path,
        "tm",
        modes=modes,
        enqueue=enqueue,
        result="TerminationMessage",
        budget={"maxTrials": 4, "parallelism": 2},
    )
    result = run_local(path, storage=storage, console=quiet(), log_dir=tmp_path / "logs")
    assert (result.complete, result.failed) == (1, 3)
    trials = by_mode(storage, "tm")
    assert trials["ok"].values == [0.25]
    reason = {m: t.user_attrs.get("kubetune:fail_reason", "") for m, t in trials.items()}
    assert reason["garbage"].startswith("NoResult: termination message is not JSON")
    assert reason["rawnan"].startswith("NoResult") and "finite" in reason["rawnan"]
    assert reason["crash"].startswith("ExitCode")


def test_max_failed_trials_stops_the_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/mf.db"
    path = manifest(
        tmp_path,
        "mf",
        modes=["crash"],
        enqueue=[],
        budget={"maxTrials": 20, "parallelism": 1, "maxFailedTrials": 2},
    )
    result = run_local(path, storage=storage, console=quiet(), log_dir=tmp_path / "logs")
    assert result.exit_code == 1
    assert result.reason.startswith("MaxFailedTrialsReached")
    assert (result.complete, result.failed) == (0, 2)


def test_postgresql_storage_works_with_a_bare_url(fresh_database: str, tmp_path: Path) -> None:
    bare = fresh_database.replace("postgresql+psycopg2://", "postgresql://")
    path = manifest(
        tmp_path, "pg", modes=["ok", "crash"], budget={"maxTrials": 3, "parallelism": 2}
    )
    result = run_local(path, storage=bare, console=quiet(), log_dir=tmp_path / "logs")
    assert result.complete >= 1 and result.failed >= 1  # the enqueued ok and crash
    assert result.complete + result.failed == 3
    study = optuna.load_study(study_name="pg", storage=fresh_database)
    assert len(study.get_trials()) == 3


def test_unreachable_storage_is_one_line_without_secrets(tmp_path: Path) -> None:
    path = manifest(tmp_path, "nodb", modes=["ok"], budget={"maxTrials": 1})
    with pytest.raises(LocalRunError) as info:
        run_local(
            path,
            storage="postgresql://kt:s3cret@127.0.0.1:1/kt",
            console=quiet(),
            log_dir=tmp_path / "logs",
        )
    message = str(info.value)
    assert "\n" not in message and "s3cret" not in message
    assert message.startswith("cannot open storage postgresql+psycopg2://kt:***@127.0.0.1:1/kt")
    assert "connect" in message  # the driver's reason, not an import error


def test_template_without_command_is_refused_before_any_trial(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "nocmd",
        modes=["ok"],
        budget={"maxTrials": 1},
        container={"name": "trainer", "image": "x:1", "args": ["--a"]},
    )
    storage = f"sqlite:///{tmp_path}/nocmd.db"
    with pytest.raises(LocalRunError, match="no command"):
        run_local(path, storage=storage, console=quiet())
    assert not list(Path(tempfile.gettempdir()).glob("kubetune-nocmd-*"))  # no log folder left
    assert optuna.load_study(study_name="nocmd", storage=storage).get_trials() == []


def test_ctrl_c_fails_running_trials_and_a_second_run_resumes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/cc.db"
    path = manifest(
        tmp_path,
        "cc",
        modes=["wait"],
        enqueue=[],
        budget={"maxTrials": 3, "parallelism": 2},
    )
    command = [sys.executable, "-m", "kubetune.cli", "run", str(path), "--storage", storage]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the trial log folder lands in tmp_path
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    stub_dir = tmp_path / "stub-dir"
    give_up = time.monotonic() + 60
    while len(list(stub_dir.glob("pid-*"))) < 2 and time.monotonic() < give_up:
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in stub_dir.glob("pid-*")]
    assert len(pids) == 2, proc.communicate(timeout=10)[0].decode()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output

    study = optuna.load_study(study_name="cc", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs["kubetune:fail_reason"].startswith(INTERRUPTED) for t in trials)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    (stub_dir / "go").write_text("")
    rerun = subprocess.run(command, capture_output=True, timeout=120, check=False, env=env)
    assert rerun.returncode == 0, rerun.stdout.decode() + rerun.stderr.decode()
    states = [t.state for t in optuna.load_study(study_name="cc", storage=storage).get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
