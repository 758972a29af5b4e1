"""Per-trial Events (kubetune.reconcile._events): one message rule, and a bounded volume."""

from __future__ import annotations

import pytest

from kubetune import reasons as R  # noqa: N812
from kubetune.reconcile import (
    AGGREGATED_REASONS,
    DEFAULT_EVENTS_PER_REASON,
    EventBudget,
    EventSpec,
    FoldEvent,
    PostEvent,
    Tell,
    aggregate_event_name,
    outcome_event,
    reported_outcome_event,
)
from kubetune.reconcile._trials import trial_events
from kubetune.status import TrialRecord

UID = "0f1e2d3c-aaaa-bbbb-cccc-000000000000"


def test_each_outcome_names_the_trial_and_its_values_step_or_reason() -> None:
    assert outcome_event(3, "COMPLETE", values=(0.5, 2.0)) == EventSpec(
        "Normal", R.TRIAL_COMPLETED, "Trial 3 completed with values [0.5, 2.0]"
    )
    assert outcome_event(4, "PRUNED", last_step=7) == EventSpec(
        "Normal", R.TRIAL_PRUNED, "Trial 4 was pruned at step 7"
    )
    assert outcome_event(4, "PRUNED").message == "Trial 4 was pruned"
    assert outcome_event(5, "FAIL", reason=R.EXIT_CODE, message="Job x failed\nlog") == (
        EventSpec("Warning", R.TRIAL_FAILED, "Trial 5 failed (ExitCode): Job x failed")
    )


def test_outcomes_told_by_the_reconcile_and_by_the_trainer_read_alike() -> None:
    told = trial_events([Tell(1, "COMPLETE", (0.25,)), Tell(2, "FAIL", None, R.NO_RESULT, "m")])
    reported = [
        reported_outcome_event(TrialRecord(1, "COMPLETE", values=(0.25,))),
        reported_outcome_event(TrialRecord(2, "FAIL", fail_reason="loss is NaN\ntraceback")),
        reported_outcome_event(TrialRecord(6, "PRUNED", last_step=2)),
        reported_outcome_event(TrialRecord(7, "RUNNING")),
    ]
    assert told[0] == reported[0]
    assert told[1].message == "Trial 2 failed (NoResult): m"
    assert reported[1] == EventSpec(
        "Warning", R.TRIAL_FAILED, "Trial 2 failed (reported by the trainer): loss is NaN"
    )
    assert reported[2] == EventSpec("Normal", R.TRIAL_PRUNED, "Trial 6 was pruned at step 2")
    assert reported[3] is None


def _outcomes(n: int) -> list[EventSpec]:
    states = ("COMPLETE", "PRUNED", "FAIL")
    return [outcome_event(i, states[i % 3], values=(float(i),), reason="X") for i in range(n)]


def test_the_first_events_of_each_reason_are_posted_then_one_aggregate_per_reason() -> None:
    budget = EventBudget()
    decisions = [budget.admit(e, study="demo", uid=UID) for e in _outcomes(200)]
    posted = [d.event for d in decisions if isinstance(d, PostEvent)]
    folded = [d for d in decisions if isinstance(d, FoldEvent)]
    assert len(posted) == 3 * DEFAULT_EVENTS_PER_REASON == 30
    for reason in (R.TRIAL_COMPLETED, R.TRIAL_PRUNED, R.TRIAL_FAILED):
        assert [e.reason for e in posted].count(reason) == DEFAULT_EVENTS_PER_REASON
    # The first ones of each kind went out one by one, in order.
    assert [e.message for e in posted[:3]] == [
        "Trial 0 completed with values [0.0]",
        "Trial 1 was pruned",
        "Trial 2 failed (X): ",
    ]
    assert len(folded) == 170
    names = {d.event.reason: d.name for d in folded}
    assert len({d.name for d in folded}) == len(names) == 3  # one aggregate per reason
    assert names[R.TRIAL_COMPLETED] == "demo.0f1e2d3c.trialcompleted"
    assert folded[-1].event.message == "Trial 199 was pruned"


def test_a_budget_counts_each_reason_apart() -> None:
    budget = EventBudget(limit=1)
    done = outcome_event(0, "COMPLETE", values=(1.0,))
    failed = outcome_event(1, "FAIL", reason=R.EXIT_CODE)
    assert isinstance(budget.admit(done, study="a", uid=UID), PostEvent)
    assert isinstance(budget.admit(done, study="a", uid=UID), FoldEvent)
    assert isinstance(budget.admit(failed, study="a", uid=UID), PostEvent)
    assert budget.admit(failed, study="a", uid=UID) == FoldEvent(failed, "a.0f1e2d3c.trialfailed")
    # A study's budget is its own (the shell keeps one per study, with its other state).
    assert isinstance(EventBudget(limit=1).admit(done, study="b", uid=UID), PostEvent)


@pytest.mark.parametrize("reason", [R.STUDY_STARTED, R.STUDY_SUCCEEDED, R.TRIALS_STOPPED])
def test_study_level_events_are_never_folded(reason: str) -> None:
    budget = EventBudget(limit=0)
    assert budget.admit(EventSpec("Normal", reason, "m"), study="a", uid=UID) == PostEvent(
        EventSpec("Normal", reason, "m")
    )


def test_every_per_trial_reason_aggregates() -> None:
    assert {
        R.TRIAL_LAUNCHED,
        R.TRIAL_RETRIED,
        R.TRIAL_COMPLETED,
        R.TRIAL_PRUNED,
        R.TRIAL_FAILED,
        R.JOB_REJECTED,
    } == AGGREGATED_REASONS


def test_aggregate_names_differ_per_study_object_and_are_valid_event_names() -> None:
    a = aggregate_event_name("demo", UID, R.TRIAL_FAILED)
    b = aggregate_event_name("demo", "99999999-0000", R.TRIAL_FAILED)
    assert a != b
    assert a == a.lower() and len(a) <= 253
    assert aggregate_event_name("demo", "", R.TRIAL_FAILED) == "demo.study.trialfailed"
