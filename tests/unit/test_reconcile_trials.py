"""Per-trial steps of the reconcile (kubetune.reconcile._trials, ._observed), each alone."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune import reasons as R  # noqa: N812
from kubetune.observed_job import JobPhase, ObservedJob
from kubetune.reconcile import (
    CreateJob,
    DeleteJob,
    EventSpec,
    ExpectedJob,
    RelaunchAttempt,
    Tell,
    VerifyJobGone,
)
from kubetune.reconcile._observed import (
    current_attempt_jobs,
    is_active,
    job_seconds,
    with_expectations,
)
from kubetune.reconcile._trials import (
    MAX_LOG_TAIL_CHARS,
    POD_STATUS_GRACE_SECONDS,
    TrialOutcomes,
    TrialRules,
    TrialVerdict,
    classify_trial,
    classify_trials,
    stale_job_deletions,
    trial_events,
    trial_states,
)
from kubetune.status import TrialRecord

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RULES = TrialRules(
    max_retries=1,
    reporter=True,
    objectives=1,
    active_deadline_seconds=60,
    image_pull_grace_seconds=120.0,
)
PARAMS = {"lr": 0.01}


def running(number: int = 0, **fields: Any) -> TrialRecord:
    """A RUNNING trial whose attempt-0 Job was created (override any field)."""
    defaults: dict[str, Any] = {"state": "RUNNING", "params": PARAMS, "job_created": 0}
    return TrialRecord(number, **(defaults | fields))


def job(trial: int = 0, attempt: int = 0, phase: JobPhase = "Active", **fields: Any) -> ObservedJob:
    return ObservedJob(f"demo-{trial}-a{attempt}", trial, attempt, phase, **fields)


def tell_of(v: TrialVerdict) -> Tell:
    (tell,) = [a for a in v.actions if isinstance(a, Tell)]
    return tell


# --- _observed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "deleting", "active"),
    [
        ("Active", False, True),
        ("Suspended", False, True),  # queued by Kueue: it holds its slot
        ("Active", True, False),
        ("Succeeded", False, False),
        ("Failed", False, False),
    ],
)
def test_is_active(phase: JobPhase, deleting: bool, active: bool) -> None:
    assert is_active(job(phase=phase, deleting=deleting)) is active


def test_job_seconds_until_completion_or_now() -> None:
    started = job(start_time=T0)
    assert job_seconds(started, T0 + timedelta(seconds=30)) == 30
    done = job(phase="Failed", start_time=T0, completion_time=T0 + timedelta(seconds=5))
    assert job_seconds(done, T0 + timedelta(hours=1)) == 5
    # Finished without a completion time: until now. Never started: nothing.
    assert job_seconds(job(phase="Succeeded", start_time=T0), T0 + timedelta(seconds=7)) == 7
    assert job_seconds(job(), T0 + timedelta(hours=1)) == 0
    assert job_seconds(job(start_time=T0 + timedelta(seconds=9)), T0) == 0  # clock skew


def test_current_attempt_jobs_skip_jobs_being_deleted() -> None:
    gone, live = job(0, 0, deleting=True), job(1, 0)
    assert current_attempt_jobs([gone, live]) == {(1, 0): live}


def test_expected_jobs_stand_in_until_the_watch_shows_them() -> None:
    seen = job(0, 0)
    expected = [
        ExpectedJob(seen.name, 0, 0),  # the watch delivered it: the real one is used
        ExpectedJob("demo-1", 1, 0),
        ExpectedJob("demo-1", 1, 0),  # expected twice: one stand-in
    ]
    assert with_expectations([seen], expected) == (seen, ObservedJob("demo-1", 1, 0, "Active"))
    assert with_expectations([seen], ()) == (seen,)


# --- classify_trial: one verdict per rule ---------------------------------------------------


def test_interrupted_ask_fails() -> None:
    v = classify_trial(running(asked=False), job(), RULES, T0)
    assert (tell_of(v).state, tell_of(v).reason) == ("FAIL", R.ASK_INTERRUPTED)


def test_missing_job_never_created_is_created() -> None:
    v = classify_trial(running(attempt=1, job_created=0), None, RULES, T0)
    assert v == TrialVerdict((CreateJob(0, 1, PARAMS),))


def test_missing_job_that_was_created_is_verified_before_anything_else() -> None:
    """Missing from the watch is not deleted: the watch lags (issue 17), so only a direct
    read's 404 (``gone``) may relaunch or fail the trial."""
    assert classify_trial(running(), None, RULES, T0) == TrialVerdict((VerifyJobGone(0, 0),))
    last = running(attempt=1, job_created=1)
    assert classify_trial(last, None, RULES, T0) == TrialVerdict((VerifyJobGone(0, 1),))
    outcomes = classify_trials([running(0), running(1, job_created=-1)], [], RULES, T0)
    assert outcomes.actions == (VerifyJobGone(0, 0), CreateJob(1, 0, PARAMS))
    assert outcomes.relaunched == {} and outcomes.tells == {}


def test_missing_job_confirmed_gone_is_retried_then_failed() -> None:
    v = classify_trial(running(), None, RULES, T0, gone=True)
    assert v.actions == (RelaunchAttempt(0, 1, PARAMS, R.JOB_DELETED),)
    assert [e.reason for e in v.events] == [R.TRIAL_RETRIED]
    assert "attempt 1 of 2" in v.events[0].message
    last = classify_trial(running(attempt=1, job_created=1), None, RULES, T0, gone=True)
    assert tell_of(last).reason == R.JOB_DELETED and last.events == ()
    # ``gone`` names one attempt: an older attempt's 404 says nothing about the current one.
    outcomes = classify_trials([running(attempt=1, job_created=1)], [], RULES, T0, {(0, 0)})
    assert outcomes.actions == (VerifyJobGone(0, 1),)
    outcomes = classify_trials([running()], [], RULES, T0, {(0, 0)})
    assert outcomes.relaunched == {0: 1}


def test_live_job_needs_nothing() -> None:
    assert classify_trial(running(), job(), RULES, T0) == TrialVerdict()
    assert classify_trial(running(), job(phase="Suspended"), RULES, T0) == TrialVerdict()


def test_unschedulable_pod_is_only_stuck() -> None:
    stuck = job(waiting_reason="Unschedulable", waiting_since=T0)
    v = classify_trial(running(), stuck, RULES, T0 + timedelta(days=1))
    assert v == TrialVerdict(stuck=stuck)


def test_image_pull_waits_for_the_grace_period_then_fails() -> None:
    pull = job(waiting_reason="ErrImagePull", waiting_message="not found", waiting_since=T0)
    early = classify_trial(running(), pull, RULES, T0 + timedelta(seconds=20))
    assert early == TrialVerdict(stuck=pull, requeue_after=100.0)
    late = classify_trial(running(), pull, RULES, T0 + timedelta(seconds=120))
    assert late.actions == (
        Tell(0, "FAIL", None, R.IMAGE_PULL_FAILED, "ErrImagePull: not found"),
        DeleteJob(pull.name, R.IMAGE_PULL_FAILED),
    )
    assert late.stuck == pull
    # Without a start time to count from, it is stuck but never failed.
    unknown = job(waiting_reason="ErrImagePull")
    assert classify_trial(running(), unknown, RULES, T0) == TrialVerdict(stuck=unknown)


def test_succeeded_job_in_reporter_mode_never_reported() -> None:
    v = classify_trial(running(), job(phase="Succeeded"), RULES, T0)
    assert tell_of(v).reason == R.NO_RESULT and "complete()" in tell_of(v).message


@pytest.mark.parametrize(
    ("message", "tell"),
    [
        ('{"values": [0.25]}', Tell(0, "COMPLETE", (0.25,), None, "")),
        ("[]", Tell(0, "FAIL", None, R.NO_RESULT, 'the termination message has no "values" list')),
        (None, Tell(0, "FAIL", None, R.NO_RESULT, "the container wrote no termination message")),
    ],
)
def test_succeeded_job_in_termination_message_mode(message: str | None, tell: Tell) -> None:
    rules = TrialRules(0, False, 1, None, 300.0)
    done = job(phase="Succeeded", termination_message=message, exit_code=0)  # pod seen exited
    v = classify_trial(running(), done, rules, T0)
    if tell.state == "FAIL":
        tell = Tell(0, "FAIL", None, R.NO_RESULT, f"Job demo-0-a0: {tell.message}")
    assert v == TrialVerdict((tell,))


def test_a_complete_job_waits_for_its_pod_status_before_no_result() -> None:
    """The Job watch can show Complete before the pod watch shows the trainer's exit (a cut or
    lagging watch): that is not "no termination message" until the grace has passed."""
    rules = TrialRules(0, False, 1, None, 300.0)
    unseen = job(phase="Succeeded", completion_time=T0)  # no exit code, no message yet
    early = classify_trial(running(), unseen, rules, T0 + timedelta(seconds=5))
    assert early == TrialVerdict(requeue_after=POD_STATUS_GRACE_SECONDS - 5)
    late = classify_trial(running(), unseen, rules, T0 + timedelta(seconds=61))
    assert tell_of(late).reason == R.NO_RESULT
    # Reporter mode reads nothing from the pod: no wait.
    assert tell_of(classify_trial(running(), unseen, RULES, T0)).reason == R.NO_RESULT


def test_disruption_is_retried_then_exhausts_the_retries() -> None:
    evicted = job(phase="Failed", failure="Disruption")
    v = classify_trial(running(), evicted, RULES, T0)
    assert v.actions == (RelaunchAttempt(0, 1, PARAMS, "Disruption"),)
    no_retries = TrialRules(0, True, 1, None, 300.0)
    assert tell_of(classify_trial(running(), evicted, no_retries, T0)).reason == (
        R.RETRIES_EXHAUSTED
    )


def test_deadline_exceeded_fails_naming_the_deadline() -> None:
    v = classify_trial(running(), job(phase="Failed", failure="DeadlineExceeded"), RULES, T0)
    assert tell_of(v).reason == R.DEADLINE_EXCEEDED
    assert "activeDeadlineSeconds (60)" in tell_of(v).message


def test_user_error_fails_with_exit_code_and_a_bounded_log_tail() -> None:
    tail = "x" * MAX_LOG_TAIL_CHARS + "END"
    failed = job(phase="Failed", failure="UserError", exit_code=2, log_tail=tail)
    message = tell_of(classify_trial(running(), failed, RULES, T0)).message
    assert message.startswith("Job demo-0-a0 failed: container exited with code 2\nlog tail:\n")
    assert message.endswith("END") and len(message.split("\n", 2)[2]) == MAX_LOG_TAIL_CHARS
    # No exit code: the Job's own message; no log: one line.
    no_code = job(phase="Failed", failure="UserError", message="BackoffLimitExceeded")
    only = tell_of(classify_trial(running(), no_code, RULES, T0))
    assert (only.reason, only.message) == (
        R.EXIT_CODE,
        "Job demo-0-a0 failed: BackoffLimitExceeded",
    )


# --- classify_trials, stale Jobs, Events, states ----------------------------------------------


def test_classify_trials_judges_running_trials_against_their_current_attempt() -> None:
    trials = [
        running(0, attempt=1, job_created=1),
        TrialRecord(1, "COMPLETE", PARAMS, (0.5,)),
        running(2),
        running(3, job_created=-1),
    ]
    jobs = [
        job(0, 0, phase="Failed", failure="UserError"),  # a superseded attempt: not judged
        job(0, 1, phase="Failed", failure="Disruption"),
        job(1, 0, phase="Failed", failure="UserError"),  # a finished trial: not judged
        job(2, 0, waiting_reason="Unschedulable"),
    ]
    out = classify_trials(trials, jobs, RULES, T0)
    (tell, create) = out.actions
    assert isinstance(tell, Tell) and (tell.trial, tell.reason) == (0, R.RETRIES_EXHAUSTED)
    assert create == CreateJob(3, 0, PARAMS)
    assert out.tells == {0: tell} and out.relaunched == {}
    assert out.stuck == (jobs[3],) and out.requeue_after == () and out.events == ()


def test_outcomes_name_the_tells_and_relaunches() -> None:
    out = TrialOutcomes(
        actions=(RelaunchAttempt(4, 2, PARAMS, "Disruption"), Tell(5, "FAIL"), CreateJob(6, 0, {}))
    )
    assert out.tells == {5: Tell(5, "FAIL")} and out.relaunched == {4: 2}


def test_stale_jobs_are_deleted_for_unknown_superseded_and_failed_trials() -> None:
    trials = [running(0, attempt=1), TrialRecord(1, "FAIL"), TrialRecord(2, "COMPLETE")]
    jobs = [
        job(0, 0),  # superseded attempt
        job(0, 1),  # current attempt: kept
        job(1, 0),  # its trial failed
        job(2, 0),  # completed trial, pod still exiting: kept (it holds the slot until it ends)
        job(9, 0),  # no such trial
        job(8, 0, phase="Failed"),  # not live: nothing to delete
        job(7, 0, deleting=True),  # already going
    ]
    assert stale_job_deletions(jobs, trials) == (
        DeleteJob("demo-0-a0", "SupersededAttempt"),
        DeleteJob("demo-1-a0", "TrialFailed"),
        DeleteJob("demo-9-a0", "UnknownTrial"),
    )


def test_trial_events_say_completed_or_failed_with_the_first_line() -> None:
    tells = [
        Tell(0, "COMPLETE", (0.5, 2.0)),
        Tell(1, "FAIL", None, R.EXIT_CODE, "Job x failed\nlog tail:\nboom"),
        Tell(2, "FAIL", None, R.NO_RESULT, ""),
    ]
    assert trial_events(tells) == (
        EventSpec("Normal", R.TRIAL_COMPLETED, "Trial 0 completed with values [0.5, 2.0]"),
        EventSpec("Warning", R.TRIAL_FAILED, "Trial 1 failed (ExitCode): Job x failed"),
        EventSpec("Warning", R.TRIAL_FAILED, "Trial 2 failed (NoResult): "),
    )


def test_trial_states_apply_the_tells() -> None:
    trials = [running(0), running(1), TrialRecord(2, "PRUNED"), TrialRecord(3, "WAITING")]
    assert trial_states(trials, {1: Tell(1, "COMPLETE", (1.0,))}) == {
        0: "RUNNING", 1: "COMPLETE", 2: "PRUNED", 3: "WAITING",
    }  # fmt: skip


def test_rules_come_from_the_spec() -> None:
    from kubetune.spec import parse_manifest

    spec = parse_manifest(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "TuningStudy",
            "metadata": {"name": "demo"},
            "spec": {
                "objectives": [
                    {"name": "a", "direction": "maximize"},
                    {"name": "b", "direction": "minimize"},
                ],
                "searchSpace": [{"name": "lr", "float": {"low": 0.1, "high": 1.0}}],
                "trial": {
                    "maxRetries": 2,
                    "activeDeadlineSeconds": 30,
                    "result": {"from": "TerminationMessage"},
                    "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
                },
            },
        }
    ).spec
    assert TrialRules.from_spec(spec, 9.0) == TrialRules(2, False, 2, 30, 9.0)


# --- heartbeat timeout (trial.heartbeatTimeoutSeconds) ----------------------------------------

HB_RULES = TrialRules(
    max_retries=1,
    reporter=True,
    objectives=1,
    active_deadline_seconds=None,
    image_pull_grace_seconds=120.0,
    heartbeat_timeout_seconds=60,
)


def test_silent_trainer_fails_with_heartbeat_timeout_and_its_job_goes() -> None:
    silent = running(heartbeat=T0)
    live = job(running_since=T0 - timedelta(seconds=5))
    verdict = classify_trial(silent, live, HB_RULES, T0 + timedelta(seconds=61))
    tell = tell_of(verdict)
    assert (tell.state, tell.reason) == ("FAIL", R.HEARTBEAT_TIMEOUT)
    assert "61 s" in tell.message and "heartbeatTimeoutSeconds: 60" in tell.message
    assert DeleteJob(live.name, R.HEARTBEAT_TIMEOUT) in verdict.actions


def test_recent_heartbeat_keeps_the_trial_and_asks_to_look_again_when_it_would_expire() -> None:
    verdict = classify_trial(
        running(heartbeat=T0 + timedelta(seconds=50)),
        job(running_since=T0),
        HB_RULES,
        T0 + timedelta(seconds=70),
    )
    assert verdict.actions == ()
    assert verdict.requeue_after == pytest.approx(40.0)


def test_first_heartbeat_is_timed_from_the_trainer_start_of_the_current_pod() -> None:
    # Attempt 0 heartbeated long ago; the retried attempt's trainer started 10 s ago: alive.
    t = running(attempt=1, job_created=1, heartbeat=T0)
    fresh = job(attempt=1, running_since=T0 + timedelta(seconds=300))
    assert classify_trial(t, fresh, HB_RULES, T0 + timedelta(seconds=310)).actions == ()
    # Never sent anything, started 61 s ago: silent.
    never = classify_trial(running(), job(running_since=T0), HB_RULES, T0 + timedelta(seconds=61))
    assert tell_of(never).reason == R.HEARTBEAT_TIMEOUT


def test_silence_while_the_report_api_was_down_does_not_count() -> None:
    """An operator restarted 10 s ago heard nothing before: its trainers could not reach it.
    A heartbeat 90 s old is then 10 s of silence, and the decision looks again at 60 s."""
    restarted = dataclasses.replace(HB_RULES, reports_since=T0 + timedelta(seconds=80))
    t, live = running(heartbeat=T0), job(running_since=T0 - timedelta(seconds=5))
    now = T0 + timedelta(seconds=90)
    verdict = classify_trial(t, live, restarted, now)
    assert verdict.actions == ()
    assert verdict.requeue_after == pytest.approx(50.0)
    assert tell_of(classify_trial(t, live, HB_RULES, now)).reason == R.HEARTBEAT_TIMEOUT
    later = classify_trial(t, live, restarted, T0 + timedelta(seconds=141))
    assert tell_of(later).reason == R.HEARTBEAT_TIMEOUT  # silent for a whole timeout since


@pytest.mark.parametrize(
    ("rules", "observed"),
    [
        (RULES, job(running_since=T0)),  # no timeout configured
        (HB_RULES, job(running_since=None)),  # no trainer running yet (pending, pulling)
        (HB_RULES, job(phase="Suspended", running_since=None)),  # suspended or queued
    ],
)
def test_no_heartbeat_judgement_without_a_timeout_or_a_running_trainer(
    rules: TrialRules, observed: ObservedJob
) -> None:
    verdict = classify_trial(running(), observed, rules, T0 + timedelta(days=1))
    assert verdict.actions == ()
    assert verdict.requeue_after is None
