"""``kubetune run`` end to end: real trainer processes, real report API, real Optuna on SQLite.

Stub trainers (tiny Python scripts written to tmp_path) play crashing, hanging, NaN, garbage
and silent trainers; they start in a fraction of the real trainer's time.

Nothing here depends on how fast the machine is (docs/testing.md): a stub that must be running
when a fault starts holds at a point until the test releases it (``support.hold``), a deadline
"passes" by a clock that jumps once the trial is holding, and every wait has a generous
deadline that fails with the runner's output.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
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

from kubetune.local import INTERRUPTED, LocalRunError, run_local
from support.hold import SUPPORT_PARENT, Holds, finish, start_python
from support.manifests import study_manifest
from support.trials import launched

STUB = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, os.environ["SUPPORT_PARENT"])
    from support.hold import hold
    from kubetune import trial as kt

    mode = sys.argv[1].removeprefix("--mode=")
    number = os.environ["KUBETUNE_TRIAL_NUMBER"]
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
    elif mode == "hang":  # held until killed: the test never releases it
        print("hanging", flush=True)
        hold(os.environ["STUB_DIR"], number)
    elif mode == "hold":  # running until the test releases it, then completes
        hold(os.environ["STUB_DIR"], number)
        kt.complete(0.9)
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
    trial: dict[str, Any] = {"result": {"from": result}}
    if deadline is not None:
        trial["activeDeadlineSeconds"] = deadline
    doc = study_manifest(
        name,
        search_space=[
            {"name": "mode", "categorical": {"choices": modes}},
            {"name": "x", "float": {"low": 0.0, "high": 1.0}},
        ],
        sampler={"type": "Random", "seed": 1},
        pruner=pruner or {"type": "None"},
        budget=budget,
        enqueue=enqueue if enqueue is not None else [{"mode": m} for m in modes],
        trial=trial,
        container=container
        or {
            "name": "trainer",
            "image": "stub:1",
            "command": ["python", str(stub)],
            "args": ["--mode=$(KUBETUNE_PARAM_MODE)"],
            "env": [
                {"name": "STUB_DIR", "value": str(tmp_path / "stub-dir")},
                {"name": "SUPPORT_PARENT", "value": SUPPORT_PARENT},
            ],
        },
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def by_mode(storage: str, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return {t.params["mode"]: t for t in study.get_trials()}


def why(trial: optuna.trial.FrozenTrial) -> tuple[str, str]:
    """(fail reason code, fail message): the operator's format, which the local runner shares."""
    attrs = trial.user_attrs
    return attrs.get("kubetune:fail_reason", ""), attrs.get("kubetune:fail_message", "")


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
    modes = ["ok", "crash", "nan", "silent", "refuse"]
    storage = f"sqlite:///{tmp_path}/bad.db"
    path = manifest(
        tmp_path, "bad", modes=modes, budget={"maxTrials": len(modes), "parallelism": 3}
    )
    result = run_local(path, storage=storage, console=quiet(), log_dir=tmp_path / "logs")
    assert (result.complete, result.failed) == (1, 4)
    assert result.exit_code == 0
    trials = by_mode(storage, "bad")
    assert trials["ok"].state == TrialState.COMPLETE
    reason, message = why(trials["crash"])
    assert reason == "ExitCode"
    assert "exited with code 3" in message and "boom in the trainer" in message
    reason, message = why(trials["nan"])
    assert reason == "ExitCode" and "finite" in message
    reason, message = why(trials["silent"])
    assert reason == "NoResult" and "never reported a final result" in message
    assert why(trials["refuse"])[0] == "dataset is missing"  # the trainer's own, via the API


class JumpWhenHolding:
    """``time.monotonic``, plus a day once a stub holds in ``holds``.

    The runner takes its clock as an argument; with this one, "the trial ran past its
    deadline" happens only after the trial has surely started and printed, however slow the
    machine, and the test still takes no longer than the trial's start-up.
    """

    DAY = 86_400.0

    def __init__(self, holds: Holds) -> None:
        self.holds = holds
        self.jumped = False

    def __call__(self) -> float:
        self.jumped = self.jumped or bool(self.holds.holding())
        return time.monotonic() + (self.DAY if self.jumped else 0.0)


def test_a_trial_past_its_deadline_is_killed_and_the_study_goes_on(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/deadline.db"
    path = manifest(
        tmp_path,
        "deadline",
        modes=["hang", "ok"],  # enqueued in this order; one at a time
        deadline=3600,
        budget={"maxTrials": 2, "parallelism": 1},
    )
    holds = Holds(tmp_path / "stub-dir")
    clock = JumpWhenHolding(holds)
    result = run_local(
        path, storage=storage, console=quiet(), log_dir=tmp_path / "logs", clock=clock
    )
    assert clock.jumped
    assert (result.complete, result.failed) == (1, 1)
    trials = by_mode(storage, "deadline")
    hang = trials["hang"]
    reason, message = why(hang)
    assert reason == "DeadlineExceeded"
    assert message.endswith("ran longer than activeDeadlineSeconds (3600)"), message
    assert "hanging" in (tmp_path / "logs" / f"trial-{hang.number}.out").read_text()
    assert trials["ok"].state == TrialState.COMPLETE  # the next trial was not cut short
    with pytest.raises(ProcessLookupError):
        os.kill(holds.holding()[str(hang.number)], 0)


class WallJumpWhenHolding(JumpWhenHolding):
    """``time.time``, plus a day once a stub holds: the runner's wall clock, which judges
    ``heartbeatTimeoutSeconds`` against the heartbeats the report API stores."""

    def __call__(self) -> float:
        self.jumped = self.jumped or bool(self.holds.holding())
        return time.time() + (self.DAY if self.jumped else 0.0)


def test_a_silent_trainer_past_its_heartbeat_timeout_is_killed_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    """``kubetune run`` applies ``trial.heartbeatTimeoutSeconds`` as the operator does."""
    storage = f"sqlite:///{tmp_path}/heartbeat.db"
    path = manifest(
        tmp_path,
        "heartbeat",
        modes=["hang", "ok"],  # enqueued in this order; one at a time
        budget={"maxTrials": 2, "parallelism": 1},
    )
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["trial"]["heartbeatTimeoutSeconds"] = 3600
    path.write_text(yaml.safe_dump(doc))
    holds = Holds(tmp_path / "stub-dir")
    wall = WallJumpWhenHolding(holds)
    result = run_local(
        path, storage=storage, console=quiet(), log_dir=tmp_path / "logs", wall_clock=wall
    )
    assert wall.jumped
    assert (result.complete, result.failed) == (1, 1)
    trials = by_mode(storage, "heartbeat")
    reason, message = why(trials["hang"])
    assert reason == "HeartbeatTimeout"
    assert "the trainer sent no report and no heartbeat for " in message, message
    assert message.endswith("(heartbeatTimeoutSeconds: 3600)"), message
    assert trials["ok"].state == TrialState.COMPLETE  # reported at once: not timed out
    with pytest.raises(ProcessLookupError):
        os.kill(holds.holding()[str(trials["hang"].number)], 0)


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
    reason, message = why(trials["garbage"])
    assert reason == "NoResult" and "not JSON" in message
    reason, message = why(trials["rawnan"])
    assert reason == "NoResult" and "finite" in message
    assert why(trials["crash"])[0] == "ExitCode"


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


def test_template_without_command_is_refused_before_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own temp folder: another test session on this machine may be running this very test.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
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
    assert optuna.get_all_study_names(storage=storage) == []  # nothing stored either


def test_ctrl_c_fails_running_trials_and_a_second_run_resumes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/cc.db"
    path = manifest(
        tmp_path,
        "cc",
        modes=["hold"],
        enqueue=[],
        budget={"maxTrials": 3, "parallelism": 2},
    )
    command = ["-m", "kubetune.cli", "run", str(path), "--storage", storage]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the trial log folder lands in tmp_path
    holds = Holds(tmp_path / "stub-dir")
    proc = start_python(command, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Both trials are running, and stay so until released: Ctrl-C surely finds them.
        pids = holds.wait_holding(["0", "1"], proc=proc)
        running = launched(optuna.load_study(study_name="cc", storage=storage).get_trials())
        assert [t.state for t in running] == [TrialState.RUNNING] * 2
        proc.send_signal(signal.SIGINT)
        code, output = finish(proc, "kubetune run after Ctrl-C")
    finally:
        if proc.poll() is None:  # the test failed above; held stubs exit when orphaned
            proc.kill()
            proc.wait()
    assert code == 130, output

    study = optuna.load_study(study_name="cc", storage=storage)
    trials = launched(study.get_trials())
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL], output
    # A trial asked ahead went back to WAITING: never run, never failed, asked first next time.
    assert all(t.state == TrialState.WAITING for t in study.get_trials() if t not in trials)
    assert all(
        why(t)[0] == INTERRUPTED and why(t)[1].startswith("the local run was interrupted (SIGINT)")
        for t in trials
    ), output
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    holds.release_all()  # the resumed run's one new trial completes at once
    rerun = start_python(command, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, output = finish(rerun, "the resumed kubetune run")
    assert code == 0, output
    states = [t.state for t in optuna.load_study(study_name="cc", storage=storage).get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]


class SignalWhenHolding:
    """``time.monotonic`` that sends ``sig`` to this process once a stub holds, then returns.

    The runner calls its clock between other work, so the signal arrives while the runner's
    own code runs, as a Ctrl-C does while it reads the storage. ``returned`` says the code that
    was running when the signal came went on to its end (a handler that raised
    ``KeyboardInterrupt`` would cut it short, leaving a storage call half-done).
    """

    def __init__(self, holds: Holds, sig: signal.Signals) -> None:
        self.holds = holds
        self.sig = sig
        self.sent = False
        self.returned = False

    def __call__(self) -> float:
        if not self.sent and self.holds.holding():
            self.sent = True
            os.kill(os.getpid(), self.sig)
            self.returned = True
        return time.monotonic()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_stops_the_run_between_steps_and_the_handlers_come_back(
    tmp_path: Path, sig: signal.Signals
) -> None:
    path = manifest(
        tmp_path, "sig", modes=["hold"], enqueue=[], budget={"maxTrials": 2, "parallelism": 1}
    )
    storage = f"sqlite:///{tmp_path}/sig.db"
    holds = Holds(tmp_path / "stub-dir")
    clock = SignalWhenHolding(holds, sig)
    before = signal.getsignal(sig)
    if before == signal.SIG_IGN:  # a background job ignores SIGINT; the runner respects that
        signal.signal(sig, signal.default_int_handler)
    try:
        result = run_local(path, storage=storage, console=quiet(), clock=clock)
        assert signal.getsignal(sig) == (
            signal.default_int_handler if before == signal.SIG_IGN else before
        )
    finally:
        signal.signal(sig, before)
    assert clock.sent and clock.returned
    assert result.exit_code == 130
    assert result.reason == f"{INTERRUPTED}: stopped by the user ({sig.name})"
    every = optuna.load_study(study_name="sig", storage=storage).get_trials()
    trials = launched(every)
    assert [t.state for t in trials] == [TrialState.FAIL]  # no second trial was launched
    assert all(t.state == TrialState.WAITING for t in every if t not in trials)  # released
    reason, message = why(trials[0])
    assert reason == INTERRUPTED
    assert message.startswith(f"the local run was interrupted ({sig.name})"), message
    with pytest.raises(ProcessLookupError):
        os.kill(holds.holding()["0"], 0)
