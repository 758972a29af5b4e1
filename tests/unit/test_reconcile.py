"""The reconcile decision (pure): one scenario per rule, plus a simulated world.

``World`` applies a decision's actions the way the shell does (Optuna gives trial numbers,
Jobs appear, tells finish trials), so the tests assert on the state of the world after a
few rounds, and on level-based idempotence: deciding again changes nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune import reasons as R  # noqa: N812
from kubetune.jobs import job_name
from kubetune.observed_job import ObservedJob
from kubetune.reconcile import (
    CreateJob,
    Decision,
    DeleteJob,
    ExpectedJob,
    LaunchTrials,
    RecordUsage,
    RelaunchAttempt,
    SuspendJob,
    Tell,
    VerifyJobGone,
    spec_hash,
    storage_error_status,
)
from kubetune.reconcile._decide import spec_changed
from kubetune.spec import Objective, parse_manifest
from kubetune.status import LedgerSnapshot, TrialRecord, TrialUsage
from support.reconcile_world import T0, World, assert_settled, make_spec, of_type


def test_first_reconcile_launches_up_to_parallelism() -> None:
    world = World(make_spec())
    d = world.step()
    assert of_type(d, LaunchTrials) == [LaunchTrials(2)]
    assert d.state == "Running"
    assert world.running_jobs() == ["demo-0", "demo-1"]
    settled = assert_settled(world)
    assert settled.status["trials"]["running"] == 2
    assert settled.status["observedGeneration"] == 1
    assert [e.reason for e in d.events] == [R.STUDY_STARTED]


def test_reporter_mode_runs_to_success_within_parallelism() -> None:
    world = World(make_spec())
    values = iter([0.5, 0.7, 0.6, 0.9, 0.1, 0.3])
    for _ in range(20):
        world.step()
        for n in world.trials:
            if world.trials[n].state == "RUNNING":
                world.report(n, "COMPLETE", next(values))
                world.finish(n)
                break
        world.now += timedelta(seconds=10)
    final = assert_settled(world)
    assert world.max_running_seen <= 2
    assert len(world.trials) == 6
    assert final.state == "Succeeded"
    assert final.status["trials"] == {
        "total": 6, "running": 0, "completed": 6, "pruned": 0, "failed": 0, "retried": 0,
    }  # fmt: skip
    assert final.status["bestTrial"]["number"] == 3
    assert final.status["completionTime"] is not None
    cond = {c["type"]: c for c in final.status["conditions"]}
    assert cond["Succeeded"]["status"] == "True"
    assert cond["Succeeded"]["reason"] == R.MAX_TRIALS_REACHED
    assert cond["Running"]["status"] == "False"
    # GPU-seconds: every finished Job's runtime x 1 GPU was settled in the ledger.
    assert set(world.usage) == set(range(6))
    assert final.status["gpuSeconds"]["used"] == pytest.approx(
        sum(u.gpu_seconds for u in world.usage.values())
    )
    assert final.status["gpuSeconds"]["used"] > 0


def test_termination_message_results_are_told() -> None:
    world = World(make_spec(trial={"result": {"from": "TerminationMessage"}}))
    world.step()
    world.finish(0, termination_message='{"values": [0.75]}')
    world.finish(1, termination_message="garbage")
    d = world.step()
    tells = {t.trial: t for t in of_type(d, Tell)}
    assert tells[0] == Tell(0, "COMPLETE", (0.75,), None, "")
    assert tells[1].state == "FAIL" and tells[1].reason == R.NO_RESULT
    assert "not JSON" in tells[1].message
    # The two freed slots are filled at once (status already counts the tells).
    assert of_type(d, LaunchTrials) == [LaunchTrials(2)]
    assert d.status["trials"]["completed"] == 1 and d.status["trials"]["failed"] == 1
    assert_settled(world)


def test_reporter_job_success_without_result_fails_no_result() -> None:
    world = World(make_spec())
    world.step()
    world.finish(0)
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert (tell.trial, tell.state, tell.reason) == (0, "FAIL", R.NO_RESULT)
    assert "complete()" in tell.message
    assert_settled(world)


def test_pruned_by_report_api_just_frees_the_slot() -> None:
    world = World(make_spec())
    world.step()
    world.report(0, "PRUNED")
    world.finish(0)
    d = world.step()
    assert of_type(d, Tell) == []
    assert of_type(d, LaunchTrials) == [LaunchTrials(1)]
    assert d.status["trials"]["pruned"] == 1


def test_user_error_fails_with_exit_code_and_log_tail() -> None:
    world = World(make_spec())
    world.step()
    world.finish(
        0, phase="Failed", failure="UserError", exit_code=3, log_tail="Traceback...\nKeyError: x"
    )
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert (tell.state, tell.reason) == ("FAIL", R.EXIT_CODE)
    assert "exited with code 3" in tell.message and "KeyError: x" in tell.message
    assert of_type(d, RelaunchAttempt) == []
    assert [e.reason for e in d.events if e.reason == R.TRIAL_FAILED] == [R.TRIAL_FAILED]
    assert_settled(world)


def test_deadline_exceeded_fails_without_retry() -> None:
    world = World(make_spec(trial={"activeDeadlineSeconds": 60}))
    world.step()
    world.finish(0, phase="Failed", failure="DeadlineExceeded")
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert tell.reason == R.DEADLINE_EXCEEDED
    assert of_type(d, RelaunchAttempt) == []


def test_disruption_retries_with_same_params_then_gives_up() -> None:
    world = World(make_spec(trial={"maxRetries": 1}))
    world.step()
    params = dict(world.trials[0].params)
    world.finish(0, phase="Failed", failure="Disruption")
    d = world.step()
    assert of_type(d, RelaunchAttempt) == [RelaunchAttempt(0, 1, params, "Disruption")]
    assert "demo-0-r1" in world.jobs
    assert of_type(d, LaunchTrials) == []  # the retry keeps the slot
    assert d.status["trials"]["retried"] == 1 and d.status["trials"]["total"] == 2
    assert_settled(world)
    world.finish(0, phase="Failed", failure="Disruption")
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert tell.reason == R.RETRIES_EXHAUSTED
    assert world.trials[0].attempt == 1
    assert d.status["trials"]["retried"] == 1  # counted once, no new trial number
    assert_settled(world)


def test_job_deleted_by_hand_is_retried_then_failed() -> None:
    world = World(make_spec(trial={"maxRetries": 1}))
    world.step()
    del world.jobs["demo-1"]
    # First a direct read of the Job (the watch alone may lag), then the retry.
    assert world.step().actions == (VerifyJobGone(1, 0),)
    d = world.step()
    assert of_type(d, RelaunchAttempt)[0].trial == 1
    assert of_type(d, RelaunchAttempt)[0].reason == R.JOB_DELETED
    del world.jobs["demo-1-r1"]
    assert world.step().actions == (VerifyJobGone(1, 1),)
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert (tell.trial, tell.reason) == (1, R.JOB_DELETED)
    assert_settled(world)


def test_crash_between_ask_and_create_creates_the_missing_job() -> None:
    world = World(make_spec())
    world.trials[0] = TrialRecord(0, "RUNNING", {"lr": 0.05})  # asked, no Job confirmed
    d = world.step()
    assert of_type(d, CreateJob) == [CreateJob(0, 0, {"lr": 0.05})]
    assert of_type(d, LaunchTrials) == [LaunchTrials(1)]  # one slot taken by trial 0
    assert world.running_jobs() == ["demo-0", "demo-1"]
    assert_settled(world)


def test_crash_between_relaunch_and_create_creates_the_retry_job() -> None:
    world = World(make_spec())
    world.trials[0] = TrialRecord(0, "RUNNING", {"lr": 0.05}, attempt=1, job_created=0)
    d = world.step()
    assert CreateJob(0, 1, {"lr": 0.05}) in d.actions


def test_interrupted_ask_fails_the_trial() -> None:
    world = World(make_spec())
    world.trials[0] = TrialRecord(0, "RUNNING", {}, asked=False)
    d = world.step()
    (tell,) = of_type(d, Tell)
    assert tell.reason == R.ASK_INTERRUPTED
    assert of_type(d, CreateJob) == []


@pytest.mark.parametrize("parallelism", [1, 3, 5])
def test_parallelism_counts_running_trials_and_active_jobs(parallelism: int) -> None:
    world = World(make_spec(budget={"maxTrials": 20, "parallelism": parallelism}))
    world.step()
    assert len(world.running_jobs()) == parallelism
    # A finished trial whose pod is still exiting keeps its slot until the Job ends.
    world.report(0, "COMPLETE", 0.5)
    assert of_type(world.decide(), LaunchTrials) == []
    world.finish(0)
    assert of_type(world.decide(), LaunchTrials) == [LaunchTrials(1)]


def test_parallelism_lowered_live_launches_nothing_until_below() -> None:
    world = World(make_spec(budget={"maxTrials": 20, "parallelism": 4}))
    world.step()
    world.spec = make_spec(budget={"maxTrials": 20, "parallelism": 2})
    world.generation = 2
    for n in (0, 1):
        world.report(n, "COMPLETE", 0.1)
        world.finish(n)
    d = world.step()
    assert of_type(d, LaunchTrials) == []
    assert d.status["observedGeneration"] == 2
    world.report(2, "COMPLETE", 0.1)
    world.finish(2)
    assert of_type(world.step(), LaunchTrials) == [LaunchTrials(1)]
    # Raised: new slots at once.
    world.spec = make_spec(budget={"maxTrials": 20, "parallelism": 5})
    assert of_type(world.step(), LaunchTrials) == [LaunchTrials(3)]


def test_max_failed_trials_fails_the_study() -> None:
    world = World(make_spec(budget={"maxTrials": 10, "parallelism": 2, "maxFailedTrials": 2}))
    world.step()
    world.finish(0, phase="Failed", failure="UserError", exit_code=1)
    world.finish(1, phase="Failed", failure="UserError", exit_code=1)
    d = world.step()
    assert of_type(d, LaunchTrials) == []
    assert d.state == "Failed"
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["Failed"]["status"] == "True"
    assert cond["Failed"]["reason"] == R.MAX_FAILED_TRIALS_REACHED
    assert any(e.reason == R.STUDY_FAILED for e in d.events)
    final = assert_settled(world)
    assert not any(e.reason == R.STUDY_FAILED for e in final.events)  # posted once


def test_deadline_stops_the_study_and_its_running_trials() -> None:
    world = World(make_spec(budget={"maxTrials": 10, "parallelism": 2, "deadlineSeconds": 100}))
    d = world.step()
    assert d.requeue_after == pytest.approx(100)
    world.now += timedelta(seconds=40)
    world.report(0, "COMPLETE", 0.3)
    world.finish(0)
    world.step()  # trial 2 takes the free slot at 40 s
    world.now += timedelta(seconds=110)  # 150 s: trials 1 (150 s run) and 2 (110 s) still run
    d = world.step()
    message = "the study stopped (DeadlineReached): the study ran for deadlineSeconds (100)"
    assert of_type(d, Tell) == [
        Tell(1, "FAIL", None, R.STUDY_STOPPED, message),
        Tell(2, "FAIL", None, R.STUDY_STOPPED, message),
    ]
    assert of_type(d, DeleteJob) == [
        DeleteJob("demo-1", R.STUDY_STOPPED),
        DeleteJob("demo-2", R.STUDY_STOPPED),
    ]
    # Their GPU time up to now is settled (1 GPU each), so nothing of it is lost.
    assert of_type(d, RecordUsage) == [RecordUsage(1, 1, 150.0), RecordUsage(2, 1, 110.0)]
    assert of_type(d, LaunchTrials) == []
    assert d.state == "Succeeded"  # at once: no trial runs any more
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["Succeeded"]["reason"] == R.DEADLINE_REACHED
    assert d.status["trials"]["failed"] == 2 and d.status["trials"]["running"] == 0
    assert d.status["gpuSeconds"]["used"] == pytest.approx(40 + 150 + 110)
    reasons = [e.reason for e in d.events]
    assert reasons == [R.TRIALS_STOPPED, R.STUDY_SUCCEEDED]  # one Event, not one per trial
    assert d.events[0].message.startswith("Stopped 2 running trials (1, 2) and deleted 2 Jobs")
    final = assert_settled(world)
    assert final.status["gpuSeconds"] == d.status["gpuSeconds"]
    assert final.state == "Succeeded"


def test_gpu_budget_stops_the_study_and_its_running_trial() -> None:
    world = World(make_spec(budget={"maxTrials": 10, "parallelism": 1, "maxGpuSeconds": 50}))
    world.step()
    world.now += timedelta(seconds=60)  # 60 s x 1 GPU on the running Job
    d = world.step()
    assert of_type(d, LaunchTrials) == []
    (tell,) = of_type(d, Tell)
    assert (tell.trial, tell.state, tell.reason) == (0, "FAIL", R.STUDY_STOPPED)
    assert "GpuBudgetExhausted" in tell.message
    assert d.state == "Failed"  # no trial completed
    assert world.usage[0] == TrialUsage(1, 60.0)
    assert world.jobs == {}
    assert assert_settled(world).status["gpuSeconds"]["used"] == pytest.approx(60)


def test_a_halted_trial_is_neither_retried_nor_given_a_missing_job() -> None:
    """Deadline passed in the same pass as a disruption and a lost Job: both trials just stop."""
    world = World(make_spec(budget={"maxTrials": 10, "parallelism": 2, "deadlineSeconds": 100}))
    world.step()
    world.now += timedelta(seconds=120)
    world.finish(0, phase="Failed", failure="Disruption")
    del world.jobs["demo-1"]
    d = world.step()
    assert of_type(d, RelaunchAttempt) == [] and of_type(d, CreateJob) == []
    assert {(t.trial, t.reason) for t in of_type(d, Tell)} == {
        (0, R.STUDY_STOPPED),
        (1, R.STUDY_STOPPED),
    }
    assert of_type(d, DeleteJob) == []  # no live Job left to stop
    # Trial 0's disrupted attempt is settled as usual: 120 s.
    assert of_type(d, RecordUsage) == [RecordUsage(0, 1, 120.0)]
    assert not any(e.reason == R.TRIAL_RETRIED for e in d.events)
    assert d.state == "Failed"
    assert_settled(world)


def test_reaching_the_goal_ends_the_study_and_stops_its_running_trials() -> None:
    base = make_spec(budget={"maxTrials": 10, "parallelism": 3})
    spec = base.model_copy(
        update={"objectives": [Objective(name="o0", direction="maximize", goal=0.9)]}
    )
    world = World(spec)
    world.step()
    world.report(0, "COMPLETE", 0.5)  # not yet
    world.finish(0)
    world.step()  # trial 3 takes its slot
    world.report(1, "COMPLETE", 0.93)  # good enough, through the report API
    world.finish(1)
    d = world.step()
    assert of_type(d, LaunchTrials) == []
    stopped = of_type(d, Tell)
    assert [(t.trial, t.reason) for t in stopped] == [(2, R.STUDY_STOPPED), (3, R.STUDY_STOPPED)]
    assert "GoalReached" in stopped[0].message
    assert {a.name for a in of_type(d, DeleteJob)} == {"demo-2", "demo-3"}
    assert d.state == "Succeeded"
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["Succeeded"]["reason"] == R.GOAL_REACHED
    assert cond["Succeeded"]["message"] == "trial 1 reached the goal: o0 0.93 >= 0.9"
    assert cond["Ready"]["reason"] == R.GOAL_REACHED  # the printer column reads this one
    assert d.status["bestTrial"]["number"] == 1
    assert [e.reason for e in d.events] == [R.TRIALS_STOPPED, R.STUDY_SUCCEEDED]
    assert assert_settled(world).state == "Succeeded"


def test_max_trials_lets_the_running_trials_finish() -> None:
    world = World(make_spec(budget={"maxTrials": 2, "parallelism": 2}))
    world.step()
    world.report(0, "COMPLETE", 0.3)
    world.finish(0)
    d = world.step()
    assert of_type(d, Tell) == [] and of_type(d, DeleteJob) == []
    assert d.state == "Running" and world.running_jobs() == ["demo-1"]


def test_suspend_suspends_the_running_jobs_and_resume_resumes_them() -> None:
    world = World(make_spec())
    world.step()
    world.spec = make_spec(suspend=True)
    d = world.step()
    assert of_type(d, SuspendJob) == [SuspendJob("demo-0", True), SuspendJob("demo-1", True)]
    assert of_type(d, LaunchTrials) == [] and d.state == "Suspended"
    assert [j.phase for j in world.jobs.values()] == ["Suspended", "Suspended"]
    settled = assert_settled(world)
    assert settled.status["trials"]["running"] == 2  # they hold their slots
    world.spec = make_spec(suspend=False)
    d = world.step()
    assert of_type(d, SuspendJob) == [SuspendJob("demo-0", False), SuspendJob("demo-1", False)]
    assert of_type(d, LaunchTrials) == []  # the slots are still theirs
    assert d.state == "Running"


def test_suspend_leaves_kueue_and_finished_trials_alone() -> None:
    queued = make_spec(suspend=True, trial={"queueName": "gpus"})
    world = World(make_spec(trial={"queueName": "gpus"}))
    world.step()
    world.spec = queued
    assert of_type(world.step(), SuspendJob) == []  # Kueue owns spec.suspend of its Jobs
    world = World(make_spec())
    world.step()
    world.report(0, "COMPLETE", 0.5)  # its pod is still on its way out
    world.spec = make_spec(suspend=True)
    assert of_type(world.step(), SuspendJob) == [SuspendJob("demo-1", True)]


def test_suspend_launches_nothing_and_resume_continues() -> None:
    world = World(make_spec(suspend=True))
    d = world.step()
    assert of_type(d, LaunchTrials) == [] and d.state == "Suspended"
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["Suspended"]["status"] == "True"
    world.spec = make_spec(suspend=False)
    d = world.step()
    assert of_type(d, LaunchTrials) == [LaunchTrials(2)]


def test_suspended_condition_does_not_claim_trials_run() -> None:
    world = World(make_spec(budget={"maxTrials": 1, "parallelism": 1}))
    world.step()
    world.report(0, "COMPLETE", 0.5)
    world.finish(0)
    d = world.step()
    assert d.state == "Succeeded"
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert (cond["Suspended"]["status"], cond["Suspended"]["reason"]) == ("False", "NotSuspended")


def test_changed_search_space_is_refused() -> None:
    world = World(make_spec())
    world.step()
    world.spec = make_spec(lr_high=0.5)
    world.report(0, "COMPLETE", 0.2)
    world.finish(0)
    d = world.step()
    assert d.state == "Invalid"
    assert of_type(d, LaunchTrials) == []
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["Invalid"]["status"] == "True"
    assert cond["Invalid"]["reason"] == R.IMMUTABLE_FIELD_CHANGED
    assert cond["Ready"]["status"] == "False"
    assert any(e.reason == R.IMMUTABLE_FIELD_CHANGED for e in d.events)
    # Budgets and parallelism may change: no refusal.
    world.spec = make_spec(budget={"parallelism": 3})
    assert world.step().state == "Running"


def test_image_pull_errors_set_a_condition_then_fail_after_grace() -> None:
    world = World(make_spec(budget={"parallelism": 1}))
    world.step()
    world.jobs["demo-0"] = dataclasses.replace(
        world.jobs["demo-0"],
        waiting_reason="ErrImagePull",
        waiting_message="manifest unknown",
        waiting_since=world.now,
    )
    d = world.step(image_pull_grace_seconds=120)
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["PodsHealthy"]["status"] == "False"
    assert cond["PodsHealthy"]["reason"] == R.IMAGE_PULL_FAILED
    assert "manifest unknown" in cond["PodsHealthy"]["message"]
    assert of_type(d, Tell) == [] and d.requeue_after == pytest.approx(120)
    world.now += timedelta(seconds=121)
    d = world.step(image_pull_grace_seconds=120)
    (tell,) = of_type(d, Tell)
    assert tell.reason == R.IMAGE_PULL_FAILED
    assert of_type(d, DeleteJob) == [DeleteJob("demo-0", R.IMAGE_PULL_FAILED)]


def test_unschedulable_pods_only_set_a_condition() -> None:
    world = World(make_spec(budget={"parallelism": 1}))
    world.step()
    world.jobs["demo-0"] = dataclasses.replace(
        world.jobs["demo-0"], waiting_reason="Unschedulable", waiting_since=world.now
    )
    world.now += timedelta(hours=5)
    d = world.step()
    cond = {c["type"]: c for c in d.status["conditions"]}
    assert cond["PodsHealthy"]["reason"] == R.UNSCHEDULABLE
    assert of_type(d, Tell) == []


def test_stray_jobs_are_deleted() -> None:
    world = World(make_spec(budget={"parallelism": 1}))
    world.step()
    world.jobs["demo-9"] = ObservedJob("demo-9", 9, 0, "Active")  # no such trial
    world.trials[0] = dataclasses.replace(world.trials[0], attempt=1, job_created=1)
    world.add_job(0, 1)  # attempt 0's Job is superseded but still active
    d = world.step()
    assert set(of_type(d, DeleteJob)) == {
        DeleteJob("demo-9", "UnknownTrial"),
        DeleteJob("demo-0", "SupersededAttempt"),
    }


def test_storage_error_status_keeps_numbers_and_flags_the_condition() -> None:
    world = World(make_spec())
    world.step()
    status = storage_error_status(
        world.status, generation=2, now=T0, message="could not connect to server"
    )
    cond = {c["type"]: c for c in status["conditions"]}
    assert cond["StorageReachable"]["status"] == "False"
    assert "could not connect" in cond["StorageReachable"]["message"]
    assert status["trials"] == world.status["trials"]
    assert status["observedGeneration"] == 1


def test_multi_objective_status_has_a_pareto_front() -> None:
    world = World(make_spec(objectives=2, trial={"result": {"from": "TerminationMessage"}}))
    world.step()
    world.finish(0, termination_message='{"values": [0.9, 3.0]}')
    world.finish(1, termination_message='{"values": [0.8, 1.0]}')
    d = world.step()
    assert [t["number"] for t in d.status["paretoFront"]] == [0, 1]


def test_expected_job_holds_its_slot_until_the_watch_shows_it() -> None:
    """A Job just created but not yet in the index: neither launched again nor 'deleted'."""
    world = World(make_spec(budget={"parallelism": 2}))
    world.step()
    unseen = world.jobs.pop("demo-1")  # created (job_created=0), the watch lags
    expected = [ExpectedJob(unseen.name, unseen.trial, unseen.attempt)]
    d = world.decide(expected=expected)
    assert d.actions == () and d.occupied == 2
    assert d.status == world.decide(expected=expected).status
    # Without the expectation the same world asks for a direct read (the retry path needs a
    # 404 from it; a Job still being created must never be launched twice).
    assert world.decide().actions == (VerifyJobGone(1, 0),)
    # Once the watch shows it, the expectation changes nothing.
    world.jobs[unseen.name] = unseen
    assert world.decide(expected=expected) == world.decide()


def test_job_missing_only_from_a_lagging_watch_is_never_relaunched() -> None:
    """The watch fell behind (kopf under load) past any expectation: the Job exists in the
    API. However many passes run, the trial keeps its one Job and its slot (issue 17)."""
    world = World(make_spec(budget={"parallelism": 2}, trial={"maxRetries": 3}))
    world.step()
    world.lagging["demo-1"] = world.jobs.pop("demo-1")  # created, confirmed; watch lags
    for _ in range(5):
        d = world.step()
        assert d.actions == (VerifyJobGone(1, 0),)  # the read finds it: nothing else
        assert d.occupied == 2 and d.status["trials"]["retried"] == 0
    assert world.trials[1].attempt == 0 and sorted(world.jobs) == ["demo-0"]
    # The watch catches up: nothing to do. Deleted for real later: verified, then retried.
    world.jobs["demo-1"] = world.lagging.pop("demo-1")
    assert_settled(world)
    del world.jobs["demo-1"]
    assert world.step().actions == (VerifyJobGone(1, 0),)
    assert of_type(world.step(), RelaunchAttempt) == [
        RelaunchAttempt(1, 1, {"lr": 0.02}, R.JOB_DELETED)
    ]
    assert_settled(world)


def test_expected_job_of_a_new_launch_keeps_parallelism() -> None:
    world = World(make_spec(budget={"maxTrials": 10, "parallelism": 2}))
    world.step()
    world.report(0, "COMPLETE", 0.5)
    world.finish(0)
    # The shell launched trial 2; its Job is not in the index yet.
    world.trials[2] = TrialRecord(2, "RUNNING", {"lr": 0.03}, job_created=0)
    d = world.decide(expected=[ExpectedJob("demo-2", 2, 0)])
    assert of_type(d, LaunchTrials) == [] and of_type(d, RelaunchAttempt) == []
    assert d.occupied == 2


def test_spec_changed_only_for_immutable_fields() -> None:
    spec = make_spec()
    ledger = LedgerSnapshot("s", (), spec_hash(spec))
    assert not spec_changed(spec, ledger)
    assert not spec_changed(make_spec(budget={"parallelism": 5}, suspend=True), ledger)
    assert spec_changed(make_spec(lr_high=0.5), ledger)
    assert not spec_changed(make_spec(lr_high=0.5), LedgerSnapshot("s"))  # new study: no hash


# --- a random world: invariants hold whatever happens ---------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["complete", "prune", "exit", "evict", "delete", "deadline", "noresult", "crash"]
        ),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=EVENTS,
    parallelism=st.integers(1, 4),
    retries=st.integers(0, 2),
    ahead=st.integers(0, 3),
)
def test_random_worlds_converge_within_budget(
    events: list[tuple[str, int]], parallelism: int, retries: int, ahead: int
) -> None:
    budget = {"maxTrials": 8, "parallelism": parallelism, "askAhead": ahead}
    spec = make_spec(budget=budget, trial={"maxRetries": retries})
    world = World(spec)
    world.step()
    for kind, pick in events:
        running = sorted(
            n for n, t in world.trials.items() if t.state == "RUNNING" and not t.parked
        )
        if running:
            n = running[pick % len(running)]
            attempt = world.trials[n].attempt
            name = job_name("demo", n, attempt)
            if name in world.jobs:
                if kind == "complete":
                    world.report(n, "COMPLETE", pick / 10)
                    world.finish(n)
                elif kind == "prune":
                    world.report(n, "PRUNED")
                    world.finish(n)
                elif kind == "exit":
                    world.finish(n, phase="Failed", failure="UserError", exit_code=1)
                elif kind == "evict":
                    world.finish(n, phase="Failed", failure="Disruption")
                elif kind == "delete":
                    del world.jobs[name]
                elif kind == "deadline":
                    world.finish(n, phase="Failed", failure="DeadlineExceeded")
                elif kind == "noresult":
                    world.finish(n)
                # "crash": the operator restarts: nothing lives in memory, so nothing to do.
        world.now += timedelta(seconds=5)
        world.step()
        assert world.max_running_seen <= parallelism
        assert all(t.attempt <= retries for t in world.trials.values())
    assert len(world.trials) <= 8
    world.step()  # a Job deleted by the last event is read (404) in one pass, retried in the next
    final = assert_settled(world)
    counts = final.status["trials"]
    launched = {n: t for n, t in world.trials.items() if t.state != "WAITING" and not t.parked}
    assert counts["total"] == len(launched)
    assert counts["running"] == sum(1 for t in launched.values() if t.state == "RUNNING")
    # Every launched RUNNING trial has exactly one live Job for its current attempt; a parked
    # trial has none and was never failed.
    for n, t in world.trials.items():
        if t.state == "RUNNING":
            assert (job_name("demo", n, t.attempt) in world.jobs) != t.parked


def test_a_grid_study_ends_when_every_point_was_tried() -> None:
    """maxTrials 10 over a grid of 2 x 2 points: four trials, then SearchSpaceExhausted."""
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "demo"},
        "spec": {
            "objectives": [{"name": "acc", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "categorical": {"choices": [0.01, 0.1]}},
                {"name": "layers", "int": {"low": 1, "high": 2}},
            ],
            "sampler": {"type": "Grid"},
            "budget": {"maxTrials": 10, "parallelism": 3},
            "trial": {
                "result": {"from": "TerminationMessage"},
                "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
            },
        },
    }
    world = World(parse_manifest(manifest).spec)
    for _ in range(10):
        world.step(grid_trials=4)
        for n, t in world.trials.items():
            if t.state == "RUNNING" and not t.parked:
                world.finish(n, termination_message='{"values": [0.5]}')
        world.now += timedelta(seconds=10)
    final = world.decide(grid_trials=4)
    assert final.actions == ()
    assert len(world.trials) == 4
    assert final.state == "Succeeded"
    cond = {c["type"]: c for c in final.status["conditions"]}
    assert cond["Succeeded"]["reason"] == R.SEARCH_SPACE_EXHAUSTED
    assert "every point of the grid was tried (4 trials" in cond["Succeeded"]["message"]
    assert final.status["progress"] == "4/4"
    assert [e.reason for e in final.events] == []  # StudySucceeded was posted once, before


def test_a_decision_is_applied_usage_first_launches_last() -> None:
    """Both shells read the order from the Decision: usage, then the steps in order, then
    launches (a sampler asked last sees every result told in the same pass)."""
    tell = Tell(1, "COMPLETE", (0.5,), None, "")
    delete = DeleteJob("s-2", "TrialFailed")
    usage = RecordUsage(1, 1, 3.0)
    decision = Decision(actions=(LaunchTrials(2), tell, usage, delete, LaunchTrials(1)), status={})
    assert decision.usage == (usage,)
    assert decision.steps == (tell, delete)
    assert decision.launches == 3
