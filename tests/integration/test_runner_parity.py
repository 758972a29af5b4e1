"""One manifest, two runners, one ledger: ``kubetune run`` and the operator on the real control
plane must leave the same trials behind (issue 15: local mode drives the same ``decide``).

The study holds a warm start that completes, a trainer failure, a trial the Median pruner stops
and trials the seeded Random sampler proposes; parallelism 1, so each ask sees the same
finished trials in both runners, and the stand-in trainer is a deterministic function of its
parameters. Compared trial by trial: number, state, parameters, values, intermediate values,
fail reason and fail message, attempt and the Job (process) created marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml
from operator_fixtures import optuna_trials, run_operator_thread, wait_state

from harness import Cluster
from kubetune.local import run_local
from support.manifests import study_manifest

PARITY_TRAINER = r"""
import math, sys
from kubetune import trial

params = trial.params()
lr, optimizer = float(params["lr"]), params["optimizer"]
if optimizer == "sgd" and lr > 0.3:
    print(f"ValueError: lr={lr} diverges with sgd", file=sys.stderr)
    sys.exit(3)
value = round(1.0 - abs(math.log10(lr) + 2.0) / 4.0, 6)
for step in range(3):
    if trial.report(round(value * (step + 1) / 3, 6), step):
        trial.pruned()
        sys.exit(0)
trial.complete(value)
"""

#: User attrs that must agree (the heartbeat is a time; the owner attrs are the operator's).
COMPARED_ATTRS = (
    "kubetune:attempt",
    "kubetune:fail_message",
    "kubetune:fail_reason",
    "kubetune:job_created",
)


def parity_manifest(trainer: Path) -> dict[str, Any]:
    return study_manifest(
        "parity",
        container={"name": "trainer", "image": "standin:1", "command": ["python", str(trainer)]},
        search_space=[
            {"name": "lr", "float": {"low": 1.0e-4, "high": 1.0, "log": True}},
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adamw"]}},
        ],
        sampler={"type": "Random", "seed": 7},
        pruner={"type": "Median", "nStartupTrials": 1, "nWarmupSteps": 0},
        budget={"maxTrials": 6, "parallelism": 1},
        enqueue=[
            {"lr": 0.01, "optimizer": "adamw"},  # completes: value 1.0
            {"lr": 0.5, "optimizer": "sgd"},  # the trainer fails: exit code 3
            {"lr": 0.0001, "optimizer": "adamw"},  # below the median: pruned at step 0
        ],
        trial={"result": {"from": "Reporter"}},
    )


def ledger_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "values": t.values,
            "intermediate": dict(t.intermediate_values),
            **{key: t.user_attrs.get(key) for key in COMPARED_ATTRS},
        }
        for t in sorted(trials, key=lambda t: t.number)
    ]


def test_kubetune_run_and_the_operator_leave_the_same_ledger(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    trainer = tmp_path / "parity_trainer.py"
    trainer.write_text(PARITY_TRAINER)
    manifest = parity_manifest(trainer)

    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, "default")
        final = wait_state(cluster, "parity", "Succeeded")
    assert runner.exit_code == 0, runner.output[-3000:]
    in_cluster = ledger_rows(optuna_trials(operator_env_vars, final))

    path = tmp_path / "parity.yaml"
    path.write_text(yaml.safe_dump(manifest))
    storage = f"sqlite:///{tmp_path}/parity.db"
    result = run_local(path, storage=storage, log_dir=tmp_path / "logs")
    assert result.exit_code == 0, result
    local = ledger_rows(optuna.load_study(study_name="parity", storage=storage).get_trials())

    states = [row["state"] for row in in_cluster]
    assert states[:3] == ["COMPLETE", "FAIL", "PRUNED"], in_cluster  # the scenario happened
    assert len(in_cluster) == 6
    for ours, theirs in zip(local, in_cluster, strict=True):
        assert ours == theirs, f"trial {theirs['number']}: local {ours} != operator {theirs}"
