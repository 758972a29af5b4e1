"""Deleting a TuningStudy with trials in flight: running trials fail with ``StudyDeleted``,
every Job goes, the finalizer is removed, and the deletion handler does not crash.
"""

from __future__ import annotations

import optuna

from kubetune.ledger import optuna_study_name
from reliability.world import NS, PLURAL, World, study_manifest


def test_deleting_a_busy_study_fails_its_trials_and_removes_its_jobs(
    operator_world: World,
) -> None:
    world = operator_world
    name = "doomed"
    world.apply(study_manifest(name, max_trials=8, parallelism=5, steps=40, sleep=0.25))
    world.wait(
        lambda: (world.status(name).get("trials") or {}).get("running", 0) == 5,
        60,
        "five trials never ran at once",
    )
    world.wait(lambda: world.cluster.kubelet.running_processes() == 5, 60, "pods not running")
    uid = world.study(name)["metadata"]["uid"]
    trials_before = world.trials(name)
    world.api.delete(PLURAL, name, NS)
    world.wait(lambda: world.api.find(PLURAL, name, NS) is None, 60, "the study was not deleted")
    world.wait(lambda: not world.jobs(name), 60, "trial Jobs outlived their study")
    world.wait(lambda: world.cluster.kubelet.running_processes() == 0, 60, "trainers kept running")
    # The Optuna study stays (history is worth keeping); its running trials were failed.
    study = optuna.load_study(
        study_name=optuna_study_name(NS, name, uid), storage=world.storage_url
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(trials_before) == 5
    assert {t.state.name for t in trials} == {"FAIL"}
    assert {t.user_attrs.get("kubetune:fail_reason") for t in trials} == {"StudyDeleted"}
    logs = world.logs()
    assert "Traceback" not in logs, logs[logs.find("Traceback") - 300 :][:3000]
