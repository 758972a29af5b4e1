"""The CLI's pure commands work from a clean checkout, with no cluster and no database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from kubetune.cli import main
from kubetune.crd import crd_yaml
from kubetune.spec import parse_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_crd_to_stdout_matches_generator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd", "--out", "-"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_crd_writes_the_file(tmp_path: Path) -> None:
    assert main(["crd", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kubetune.io_tuningstudies.yaml").read_text() == crd_yaml()


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_plan_shows_space_proposals_and_job(
    example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(ROOT / "examples" / example), "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out
    assert "Search space" in out
    assert "kind: Job" in out
    assert "KUBETUNE_PARAMS" in out
    assert "backoffLimit: 0" in out


def test_plan_on_a_bad_manifest_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples" / "quickstart.yaml").read_text().replace("low: 1.0e-4", "low: 5.0")
    )
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "low (5.0) must be less than high" in err
    assert "Traceback" not in err


def test_run_refuses_gp_without_torch_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gp = tmp_path / "gp.yaml"
    gp.write_text(
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("sampler: {type: TPE, seed: 7, nStartupTrials: 6}", "sampler: {type: GP}")
    )
    monkeypatch.setitem(sys.modules, "torch", None)  # as `import torch` sees a missing torch
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(gp)]) == 2
    err = capsys.readouterr().err
    assert "the GP sampler needs PyTorch in this Python environment" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.db"))  # refused before any storage was opened


#: A trainer for local runs: its value is the ``lr`` parameter (TerminationMessage mode).
LR_IS_THE_VALUE = (
    "import json, os; open(os.environ['KUBETUNE_TERMINATION_LOG'], 'w')"
    ".write(json.dumps({'values': [float(os.environ['KUBETUNE_PARAM_LR'])]}))"
)


def local_manifest(
    tmp_path: Path,
    *,
    name: str = "local",
    space: list[dict[str, Any]] | None = None,
    sampler: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    objective: dict[str, Any] | None = None,
) -> Path:
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "objectives": [objective or {"name": "acc", "direction": "maximize"}],
            "searchSpace": space
            or [
                {"name": "lr", "categorical": {"choices": [0.1, 0.2]}},
                {"name": "layers", "int": {"low": 1, "high": 2}},
            ],
            "sampler": sampler or {"type": "Grid"},
            "budget": budget or {"maxTrials": 10, "parallelism": 2},
            "trial": {
                "result": {"from": "TerminationMessage"},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "t",
                                "image": "t:1",
                                "command": ["python", "-c", LR_IS_THE_VALUE],
                            }
                        ]
                    }
                },
            },
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_shows_the_grid_size_and_when_it_ends_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(local_manifest(tmp_path)), "--trials", "9"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Grid: 4 points; the study ends after 4 trials (SearchSpaceExhausted)" in out
    assert "before maxTrials=10" in out
    assert "First 4 proposals" in out and '"layers": 2' in out
    assert main(["plan", str(ROOT / "examples" / "grid.yaml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Grid: 12 points" in out and "SearchSpaceExhausted" not in out


def test_a_local_grid_study_ends_when_every_point_was_tried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path}/grid.db"
    assert main(["run", str(local_manifest(tmp_path, name="grid")), "--storage", storage]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Stopped: SearchSpaceExhausted: every point of the grid was tried (4 trials" in out
    trials = optuna.load_study(study_name="grid", storage=storage).trials
    assert sorted((t.params["lr"], t.params["layers"]) for t in trials) == [
        (0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2),
    ]  # fmt: skip
    assert {t.state.name for t in trials} == {"COMPLETE"}


def test_a_local_study_that_stops_on_failures_stops_its_running_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 0 fails at once; trial 1 would run for minutes: maxFailedTrials 1 stops it."""
    manifest = local_manifest(
        tmp_path,
        name="halt",
        space=[{"name": "lr", "float": {"low": 0.1, "high": 0.2}}],
        sampler={"type": "Random", "seed": 1},
        budget={"maxTrials": 4, "parallelism": 2, "maxFailedTrials": 1},
    )
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["trial"]["template"]["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        "import os, sys, time\n"
        "if os.environ['KUBETUNE_TRIAL_NUMBER'] == '0': sys.exit(3)\n"
        "time.sleep(600)",
    ]
    manifest.write_text(yaml.safe_dump(doc))
    storage = f"sqlite:///{tmp_path}/halt.db"
    assert main(["run", str(manifest), "--storage", storage]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "Stopped: MaxFailedTrialsReached" in out
    trials = optuna.load_study(study_name="halt", storage=storage).trials
    # Trials asked ahead (Random: one per slot) go back to WAITING: never run, never failed.
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert not any("kubetune:job_created" in t.user_attrs for t in trials[2:])
    assert trials[0].user_attrs["kubetune:fail_reason"].startswith("ExitCode")
    assert trials[1].user_attrs["kubetune:fail_reason"] == "StudyStopped"
    assert trials[1].user_attrs["kubetune:fail_message"] == (
        "the study stopped (MaxFailedTrialsReached): 1 trials failed (maxFailedTrials: 1)"
    )


def test_a_local_study_ends_at_its_goal_and_stops_the_running_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warm starts lr=0.2 (runs for minutes) and lr=0.9 (at once): 0.9 reaches the goal 0.8."""
    manifest = local_manifest(
        tmp_path,
        name="goal",
        space=[{"name": "lr", "float": {"low": 0.1, "high": 1.0}}],
        sampler={"type": "Random", "seed": 1},
        budget={"maxTrials": 10, "parallelism": 2},
        objective={"name": "acc", "direction": "maximize", "goal": 0.8},
    )
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["enqueueTrials"] = [{"lr": 0.2}, {"lr": 0.9}]
    doc["spec"]["trial"]["template"]["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        "import os, time\n"
        "if float(os.environ['KUBETUNE_PARAM_LR']) < 0.5: time.sleep(600)\n" + LR_IS_THE_VALUE,
    ]
    manifest.write_text(yaml.safe_dump(doc))
    storage = f"sqlite:///{tmp_path}/goal.db"
    assert main(["run", str(manifest), "--storage", storage]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Stopped: GoalReached: trial 1 reached the goal: acc 0.9 >= 0.8" in out
    trials = optuna.load_study(study_name="goal", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "WAITING", "WAITING"]
    assert trials[0].user_attrs["kubetune:fail_reason"] == "StudyStopped"
    assert (
        trials[0]
        .user_attrs["kubetune:fail_message"]
        .startswith("the study stopped (GoalReached): trial 1 reached the goal")
    )


def test_status_of_a_local_run_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kubetune status NAME`` alone reads the local run's default storage, here."""
    monkeypatch.chdir(tmp_path)
    manifest = local_manifest(tmp_path, name="mixed")
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["trial"]["template"]["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        "import os, sys\n"
        "if os.environ['KUBETUNE_PARAM_LAYERS'] == '2': sys.exit(3)\n" + LR_IS_THE_VALUE,
    ]
    manifest.write_text(yaml.safe_dump(doc))
    assert main(["run", str(manifest)]) == 0
    capsys.readouterr()
    assert main(["status", "mixed", "--last", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Study:        mixed"
    assert lines[1] == "Objectives:   acc (maximize)"
    assert lines[2] == (
        "Trials:       4 total: 0 running, 2 complete, 0 pruned, 2 failed "
        "(0 retried attempts, 0 waiting)"
    )
    assert lines[3] == "Best:         trial " + lines[3].split("trial ")[1]
    assert lines[3].endswith("acc=0.2") and lines[4].strip() == "layers=1,lr=0.2"
    assert lines[5].startswith("GPU-seconds:  0.0 used, 0.0 saved by pruning")  # no GPU asked
    assert lines[6] == "Last 3 trials:"
    header, *rows = lines[7:]
    assert header.split() == [
        "TRIAL", "STATE", "VALUES", "ATTEMPTS", "DURATION", "REASON", "PARAMS",
    ]  # fmt: skip
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    failed = [r.split() for r in rows if "FAIL" in r]
    assert failed and all(r[4] == "ExitCode" and r[5].startswith("layers=2,") for r in failed)
    assert main(["status", "nothing"]) == 2
    assert "no local run of 'nothing' here" in capsys.readouterr().err


def _operator_study(storage: str, uid: str, *, values: list[float]) -> None:
    """A study as the operator leaves it, written through the operator's own ledger."""
    from kubetune.ledger import Ledger
    from kubetune.reconcile import RecordUsage

    spec = parse_manifest(
        yaml.safe_load(
            local_manifest(
                Path(storage.removeprefix("sqlite:///")).parent,
                name="op",
                sampler={"type": "Random", "seed": 1},
                space=[{"name": "lr", "float": {"low": 0.1, "high": 0.2}}],
            ).read_text()
        )
    ).spec
    ledger = Ledger(storage)
    study = ledger.open(spec, namespace="team", name="op", uid=uid)
    for v in values:
        number, _ = ledger.ask(study, spec)
        ledger.tell(study, number, "COMPLETE", [v])
    number, _ = ledger.ask(study, spec)
    ledger.set_attempt(study, number, 1)  # retried once, then stopped with the study
    ledger.tell(study, number, "FAIL", reason="StudyStopped", message="the study stopped")
    usage = [RecordUsage(n, 1, 100.0 * (n + 1)) for n in range(len(values) + 1)]
    ledger.record_usage(study, usage)


def test_status_of_an_operator_study_by_tuningstudy_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path}/op.db"
    _operator_study(storage, "uid-1", values=[0.1])
    _operator_study(storage, "uid-2", values=[0.3, 0.9])  # created again: the newest
    assert main(["status", "team/op", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "2 studies match 'team/op' (the TuningStudy was created again); "
        "showing the newest, team.op.uid-2\n"
        "Study:        team.op.uid-2  (TuningStudy team/op)\n"
    )
    assert "3 total: 0 running, 2 complete, 0 pruned, 1 failed (1 retried attempts" in out
    assert "Best:         trial 1: objective 0=0.9" in out
    assert "GPU-seconds:  600.0 used, 0.0 saved by pruning" in out
    table = out.split("Last 3 trials:\n")[1].splitlines()
    assert table[0].split() == [
        "TRIAL", "STATE", "VALUES", "ATTEMPTS", "DURATION", "REASON", "PARAMS",
    ]  # fmt: skip
    # Trial 2 has no values: its row reads number, state, attempts, duration, reason, params.
    # (Its duration is the wall clock between two SQLite writes: a second under load.)
    number, state, attempts, duration, reason = table[3].split()[:5]
    assert [number, state, attempts, reason] == ["2", "FAIL", "2", "StudyStopped"]
    assert duration in ("0s", "1s", "2s")
    # The Optuna study name works too, and so does the bare TuningStudy name.
    assert main(["status", "team.op.uid-1", "--storage", storage, "--last", "0"]) == 0
    first = capsys.readouterr().out
    assert "Study:        team.op.uid-1" in first and "Last" not in first
    assert main(["status", "op", "--storage", storage]) == 0
    assert "team.op.uid-2" in capsys.readouterr().out
    # Without a name: the storage's studies, as kubectl would list them.
    assert main(["status", "--storage", storage]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["STUDY", "TUNINGSTUDY", "TRIALS", "DIRECTIONS", "STARTED"]
    assert [r.split()[:4] for r in listing[1:]] == [
        ["team.op.uid-1", "team/op", "2", "maximize"],
        ["team.op.uid-2", "team/op", "3", "maximize"],
    ]
    assert main(["status", "other", "--storage", storage]) == 2
    assert "no study 'other' in this storage" in capsys.readouterr().err
    assert main(["status"]) == 2
    assert "give a study NAME" in capsys.readouterr().err
