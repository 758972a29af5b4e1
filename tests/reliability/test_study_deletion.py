"""Deleting a TuningStudy with trials in flight: running trials fail with ``StudyDeleted``,
every Job goes, the finalizer is removed, and the deletion handler does not crash.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from kubetune.ledger import optuna_study_name
from reliability.world import NS, PLURAL, World, study_manifest
from support.trials import launched


def test_deleting_a_busy_study_fails_its_trials_and_removes_its_jobs(
    operator_world: World, tmp_path: Path
) -> None:
    world = operator_world
    name = "doomed"
    # Every trial holds after its first step and is never released: five run at once when
    # the study is deleted, however slow the machine.
    gate = tmp_path / "gate"
    gate.mkdir()
    held = ",".join(str(n) for n in range(8))
    world.apply(study_manifest(name, max_trials=8, parallelism=5, steps=2, hold=(gate, held, 0)))
    world.wait_reached(gate, [str(n) for n in range(5)])
    world.wait(
        lambda: (world.status(name).get("trials") or {}).get("running", 0) == 5,
        "the status never counted five running trials",
    )
    assert world.cluster.kubelet.running_processes() == 5
    uid = world.study(name)["metadata"]["uid"]
    ran_before = launched(world.trials(name))
    assert len(ran_before) == 5
    world.api.delete(PLURAL, name, NS)
    world.wait(lambda: world.api.find(PLURAL, name, NS) is None, "the study was not deleted")
    world.wait(lambda: not world.jobs(name), "trial Jobs outlived their study")
    world.wait(lambda: world.cluster.kubelet.running_processes() == 0, "trainers kept running")
    # The Optuna study stays (history is worth keeping); its running trials were failed.
    study = optuna.load_study(
        study_name=optuna_study_name(NS, name, uid), storage=world.storage_url
    )
    trials = study.get_trials(deepcopy=False)
    ran = launched(trials)
    assert sorted(t.number for t in ran) == sorted(t.number for t in ran_before)
    assert {t.state.name for t in ran} == {"FAIL"}
    assert {t.user_attrs.get("kubetune:fail_reason") for t in ran} == {"StudyDeleted"}
    # Trials asked ahead (Random: up to one per slot, within maxTrials) never ran: released
    # back to WAITING, not failed.
    assert len(trials) <= 8
    assert all(t.state.name == "WAITING" for t in trials if t not in ran)
    logs = world.logs()
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 300 :][:3000]
