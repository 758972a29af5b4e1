"""Budget and GPU steps of the reconcile (kubetune.reconcile._budget, ._gpu), each alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune import reasons as R  # noqa: N812
from kubetune.observed_job import JobPhase, ObservedJob
from kubetune.reconcile import RecordUsage, Tell
from kubetune.reconcile._ahead import plan_launches
from kubetune.reconcile._budget import (
    Goal,
    Stop,
    TrialTally,
    free_slots,
    goal_reached,
    launch_room,
    seconds_to_deadline,
    stop_reason,
    tally_trials,
    trial_cap,
)
from kubetune.reconcile._gpu import (
    GpuAccount,
    gpu_account,
    gpu_seconds_used,
    settle_usage,
)
from kubetune.spec import Budget, Objective
from kubetune.status import (
    TrialRecord,
    TrialStateName,
    TrialUsage,
    gpu_seconds_saved,
    pruning_savings,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def job(
    trial: int, attempt: int = 0, phase: JobPhase = "Active", seconds: float | None = None
) -> ObservedJob:
    """A Job started at T0; ``seconds`` after which it finished (when it did)."""
    done = T0 + timedelta(seconds=seconds) if seconds is not None else None
    return ObservedJob(
        f"j-{trial}-{attempt}", trial, attempt, phase, start_time=T0, completion_time=done
    )


def tally(occupied: int = 0, asked: int = 0, failed: int = 0, completed: int = 0) -> TrialTally:
    return TrialTally(frozenset(range(occupied)), asked, failed, completed)


# --- tally ------------------------------------------------------------------------------------


def test_tally_counts_slots_from_running_trials_and_live_jobs() -> None:
    states: dict[int, TrialStateName] = {
        0: "RUNNING", 1: "COMPLETE", 2: "FAIL", 3: "WAITING", 4: "PRUNED", 5: "COMPLETE",
    }  # fmt: skip
    jobs = [job(0), job(1), job(2, phase="Failed", seconds=3), job(7, phase="Suspended")]
    # Trial 1 finished but its pod still exits: it holds the slot; so does the queued Job 7.
    assert tally_trials(states, jobs) == TrialTally(frozenset({0, 1, 7}), 5, 1, 2)


# --- stop rules -------------------------------------------------------------------------------


def stop(
    budget: dict[str, Any], t: TrialTally, *, gpu: float = 0.0, after: float = 0
) -> Stop | None:
    return stop_reason(
        Budget(**budget), t, gpu_used=gpu, start_time=T0, now=T0 + timedelta(seconds=after)
    )


def test_nothing_stops_a_study_within_budget() -> None:
    budget = {"max_trials": 5, "max_failed_trials": 2, "deadline_seconds": 60, "max_gpu_seconds": 9}
    assert stop(budget, tally(asked=4, failed=1), gpu=8.9, after=59) is None


def test_each_budget_rule_stops_launches() -> None:
    # Failures, time and GPUs halt the study (its running trials stop too); maxTrials and
    # the grid's end let the running trials finish.
    assert stop({"max_trials": 5, "max_failed_trials": 2}, tally(asked=2, failed=2)) == Stop(
        R.MAX_FAILED_TRIALS_REACHED, "2 trials failed (maxFailedTrials: 2)", halts=True
    )
    assert stop({"max_trials": 5}, tally(asked=5)) == Stop(
        R.MAX_TRIALS_REACHED, "all 5 trials were launched"
    )
    assert stop({"max_trials": 5, "deadline_seconds": 60}, tally(), after=60) == Stop(
        R.DEADLINE_REACHED, "the study ran for deadlineSeconds (60)", halts=True
    )
    assert stop({"max_trials": 5, "max_gpu_seconds": 9}, tally(), gpu=9.4) == Stop(
        R.GPU_BUDGET_EXHAUSTED, "9 GPU-seconds used (maxGpuSeconds: 9)", halts=True
    )


def test_failures_win_over_the_other_rules() -> None:
    everything = {
        "max_trials": 2,
        "max_failed_trials": 1,
        "deadline_seconds": 1,
        "max_gpu_seconds": 1,
    }
    got = stop(everything, tally(asked=2, failed=1), gpu=5, after=5)
    assert got is not None and got.reason == R.MAX_FAILED_TRIALS_REACHED
    got = stop({**everything, "max_failed_trials": None}, tally(asked=2), gpu=5, after=5)
    assert got is not None and got.reason == R.MAX_TRIALS_REACHED


def test_goal_reached_is_the_first_complete_trial_at_or_past_every_goal() -> None:
    acc = Objective(name="acc", direction="maximize", goal=0.9)
    loss = Objective(name="loss", direction="minimize", goal=0.2)
    free = Objective(name="seconds", direction="minimize")
    trials = [
        TrialRecord(0, "COMPLETE", values=(0.95, 0.3, 9.0)),  # acc yes, loss no
        TrialRecord(1, "PRUNED", values=(0.99, 0.1, 1.0)),  # not complete
        TrialRecord(2, "RUNNING"),
        TrialRecord(3, "COMPLETE", values=(0.9, 0.2, 99.0)),  # both, exactly at the goals
        TrialRecord(4, "COMPLETE", values=(1.0, 0.0, 1.0)),
    ]
    single = [
        TrialRecord(0, "COMPLETE", values=(0.85,)),
        TrialRecord(1, "COMPLETE", values=(0.95,)),
    ]
    assert goal_reached(single, {}, [acc]) == Goal(1, ("acc 0.95 >= 0.9",))
    assert goal_reached(trials, {}, [acc]) is None  # three values: not this study's trials
    assert goal_reached(trials, {}, [acc, loss, free]) == Goal(
        3, ("acc 0.9 >= 0.9", "loss 0.2 <= 0.2")
    )
    assert goal_reached(trials, {}, [Objective(name="acc", direction="maximize")]) is None
    assert goal_reached(single, {}, [Objective(name="acc", direction="minimize", goal=0)]) is None
    # A result told in this very pass counts.
    tells = {2: Tell(2, "COMPLETE", (0.91,))}
    assert goal_reached([TrialRecord(2, "RUNNING")], tells, [acc]) == Goal(2, ("acc 0.91 >= 0.9",))
    assert goal_reached([TrialRecord(0, "COMPLETE", values=(float("nan"),))], {}, [acc]) is None


def test_the_goal_stops_the_study_before_any_other_rule() -> None:
    goal = Goal(3, ("acc 0.95 >= 0.9",))
    got = stop_reason(
        Budget(max_trials=4, max_failed_trials=1),
        tally(asked=4, failed=1),
        gpu_used=0,
        start_time=T0,
        now=T0,
        goal=goal,
    )
    assert got == Stop(R.GOAL_REACHED, "trial 3 reached the goal: acc 0.95 >= 0.9", halts=True)


def test_a_grid_smaller_than_max_trials_stops_once_every_point_was_tried() -> None:
    def grid_stop(t: TrialTally, grid_trials: int | None) -> Stop | None:
        return stop_reason(
            Budget(max_trials=10), t, gpu_used=0, start_time=T0, now=T0, grid_trials=grid_trials
        )

    assert grid_stop(tally(asked=3), 4) is None
    assert grid_stop(tally(asked=4), 4) == Stop(
        R.SEARCH_SPACE_EXHAUSTED, "every point of the grid was tried (4 trials; maxTrials: 10)"
    )
    assert grid_stop(tally(asked=4), None) is None  # not a Grid study
    # maxTrials first: a grid as large as maxTrials or larger ends as any study does.
    got = grid_stop(tally(asked=10), 12)
    assert got is not None and got.reason == R.MAX_TRIALS_REACHED
    assert trial_cap(Budget(max_trials=10), 4) == 4
    assert trial_cap(Budget(max_trials=10), 40) == 10
    assert trial_cap(Budget(max_trials=10), None) == 10


def launches(
    budget: Budget, tally: TrialTally, *, blocked: bool, grid_trials: int | None = None
) -> int:
    """New trials launched with nothing asked ahead."""
    room = launch_room(budget, tally, grid_trials)
    plan = plan_launches(free_slots(budget, tally), room, (), ahead=0, blocked=blocked)
    assert plan.park == 0 and plan.parked == () and plan.release == ()
    return plan.new


def test_launches_never_go_past_the_grid() -> None:
    budget = Budget(max_trials=10, parallelism=3)
    assert launches(budget, tally(0, 2), blocked=False, grid_trials=4) == 2
    assert launches(budget, tally(1, 4), blocked=False, grid_trials=4) == 0


def test_seconds_to_deadline() -> None:
    assert seconds_to_deadline(Budget(), T0, T0) is None
    budget = Budget(deadline_seconds=100)
    assert seconds_to_deadline(budget, T0, T0 + timedelta(seconds=30)) == 70
    assert seconds_to_deadline(budget, T0, T0 + timedelta(seconds=300)) == 0


# --- slots ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("occupied", "asked", "blocked", "expected"),
    [
        (0, 0, False, 3),  # all of parallelism
        (2, 2, False, 1),  # the free slot
        (5, 5, False, 0),  # parallelism lowered below what runs: none, never negative
        (0, 9, False, 1),  # only what is left of maxTrials
        (0, 10, False, 0),
        (0, 0, True, 0),  # suspended, invalid or stopped
    ],
)
def test_launches_fill_free_slots_within_max_trials(
    occupied: int, asked: int, blocked: bool, expected: int
) -> None:
    budget = Budget(max_trials=10, parallelism=3)
    assert launches(budget, tally(occupied, asked), blocked=blocked) == expected


# --- GPU accounting ---------------------------------------------------------------------------


def test_settle_usage_adds_finished_attempts_not_yet_settled() -> None:
    trials = [TrialRecord(n, "RUNNING") for n in range(3)]
    jobs = [
        job(0, 0, "Failed", seconds=10),  # settled already (attempts 0..0)
        job(0, 1, "Succeeded", seconds=20),
        job(1, 0, "Succeeded", seconds=5),
        job(2, 0),  # still running: not settled
        job(9, 0, "Succeeded", seconds=5),  # no such trial
    ]
    usage = {0: TrialUsage(1, 20.0)}
    settled, after = settle_usage(trials, jobs, usage, 2.0, T0 + timedelta(hours=1))
    assert settled == (RecordUsage(0, 2, 60.0), RecordUsage(1, 1, 10.0))
    assert after == {0: TrialUsage(2, 60.0), 1: TrialUsage(1, 10.0)}
    # Settling again on the new usage is a no-op (absolute values, idempotent).
    assert settle_usage(trials, jobs, after, 2.0, T0 + timedelta(hours=2)) == ((), after)


def test_gpu_used_is_settled_plus_live_jobs() -> None:
    usage = {0: TrialUsage(1, 100.0)}
    jobs = [job(1), job(2, phase="Succeeded", seconds=5)]  # only the live one counts on top
    assert gpu_seconds_used(usage, jobs, 2.0, T0 + timedelta(seconds=30)) == 160.0


def test_a_suspended_job_uses_no_gpu_time() -> None:
    # Suspended (spec.suspend, or queued by Kueue): the pod is gone; the Job keeps its old
    # startTime, which must not count as GPU time while it waits.
    jobs = [job(1), job(2, phase="Suspended")]
    assert gpu_seconds_used({}, jobs, 1.0, T0 + timedelta(seconds=30)) == 30.0


def test_gpu_saved_is_what_pruned_trials_did_not_use_against_the_mean() -> None:
    usage = {n: TrialUsage(1, s) for n, s in enumerate([100.0, 300.0, 50.0, 250.0])}
    states: dict[int, TrialStateName] = {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}
    assert gpu_seconds_saved(usage, states) == 150.0  # mean 200: 150 + 0 (never negative)
    assert pruning_savings(usage, states) == {2: 150.0, 3: 0.0}
    assert gpu_seconds_saved(usage, {2: "PRUNED"}) == 0.0  # nothing complete to compare with


def test_gpu_account_settles_then_counts() -> None:
    trials = [TrialRecord(0, "COMPLETE"), TrialRecord(1, "PRUNED")]
    jobs = [job(0, 0, "Succeeded", seconds=40), job(1, 0, "Succeeded", seconds=10)]
    states: dict[int, TrialStateName] = {0: "COMPLETE", 1: "PRUNED"}
    account = gpu_account(trials, jobs, {}, states, gpus=1.0, now=T0 + timedelta(hours=1))
    # The pruned trial's settlement carries its saving: what the metrics count is the status's.
    pruned = RecordUsage(1, 1, 10.0, saved_by_pruning=30.0)
    assert account == GpuAccount((RecordUsage(0, 1, 40.0), pruned), 50.0, 30.0)
