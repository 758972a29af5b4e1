"""Study-level steps of the reconcile (kubetune.reconcile._study, ._decide), each alone."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from kubetune import reasons as R  # noqa: N812
from kubetune.observed_job import ObservedJob
from kubetune.reconcile import EventSpec, Tell
from kubetune.reconcile._budget import Stop, TrialTally
from kubetune.reconcile._decide import earliest
from kubetune.reconcile._study import (
    IMMUTABLE_FIELD_MESSAGE,
    MAX_ERROR_MESSAGE,
    StudyVerdict,
    completion_time,
    describe_error,
    pods_healthy_condition,
    projected_ledger,
    reconcile_backoff,
    reconcile_error_status,
    redact,
    storage_error_status,
    study_conditions,
    study_events,
    study_state,
)
from kubetune.status import ConditionSpec, LedgerSnapshot, StudyState, TrialRecord, TrialUsage

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TRIALS_DONE = Stop(R.MAX_TRIALS_REACHED, "all 4 trials were launched")
TOO_MANY_FAILED = Stop(R.MAX_FAILED_TRIALS_REACHED, "2 trials failed (maxFailedTrials: 2)")


def state(
    stop: Stop | None = None,
    *,
    running: int = 0,
    asked: int = 0,
    completed: int = 0,
    invalid: bool = False,
    suspended: bool = False,
) -> StudyVerdict:
    tally = TrialTally(frozenset(range(running)), asked, 0, completed)
    return study_state(tally, stop, running=running, invalid=invalid, suspended=suspended)


# --- the study's state ------------------------------------------------------------------------


def test_study_state_table() -> None:
    assert state() == StudyVerdict("Pending", R.WAITING_FOR_TRIALS, "no trial launched yet")
    assert state(running=2, asked=2) == StudyVerdict(
        "Running", R.TRIALS_RUNNING, "2 trials running"
    )
    assert state(asked=3, completed=3, running=0) == StudyVerdict(
        "Running", R.TRIALS_RUNNING, "0 trials running"
    )  # between a finish and the next launch
    assert state(TRIALS_DONE, running=1, asked=4) == StudyVerdict(
        "Running", R.MAX_TRIALS_REACHED, "all 4 trials were launched; waiting for 1 trials"
    )
    assert state(TRIALS_DONE, asked=4, completed=3) == StudyVerdict(
        "Succeeded", R.MAX_TRIALS_REACHED, "all 4 trials were launched"
    )
    assert state(TRIALS_DONE, asked=4) == StudyVerdict(
        "Failed", R.MAX_TRIALS_REACHED, "all 4 trials were launched; no trial completed"
    )
    assert state(TOO_MANY_FAILED, asked=4, completed=2) == StudyVerdict(
        "Failed", R.MAX_FAILED_TRIALS_REACHED, "2 trials failed (maxFailedTrials: 2)"
    )
    assert state(suspended=True, running=1) == StudyVerdict(
        "Suspended",
        R.STUDY_SUSPENDED,
        "spec.suspend is true; no new trials, 1 started ones hold their slots",
    )


def test_invalid_wins_and_a_finished_study_stays_finished_when_suspended() -> None:
    assert state(TRIALS_DONE, invalid=True, suspended=True) == StudyVerdict(
        "Invalid", R.IMMUTABLE_FIELD_CHANGED, IMMUTABLE_FIELD_MESSAGE
    )
    assert state(TRIALS_DONE, asked=4, completed=1, suspended=True).state == "Succeeded"
    assert state(TRIALS_DONE, running=1, asked=4, suspended=True).state == "Suspended"


# --- conditions -------------------------------------------------------------------------------


def conditions_of(
    verdict: StudyVerdict, *, invalid: bool = False, suspended: bool = False, running: int = 0
) -> dict[str, ConditionSpec]:
    conds = study_conditions(
        verdict, invalid=invalid, suspended=suspended, running=running, stuck=()
    )
    return {c.type: c for c in conds}


def test_conditions_of_a_running_study() -> None:
    verdict = StudyVerdict("Running", R.TRIALS_RUNNING, "2 trials running")
    got = study_conditions(verdict, invalid=False, suspended=False, running=2, stuck=())
    assert got == [
        ConditionSpec(R.COND_READY, "True", R.TRIALS_RUNNING, "2 trials running"),
        ConditionSpec(R.COND_INVALID, "False", R.SPEC_VALID, ""),
        ConditionSpec(R.COND_STORAGE_REACHABLE, "True", R.STORAGE_REACHABLE, ""),
        ConditionSpec(R.COND_RECONCILED, "True", R.RECONCILE_SUCCEEDED, ""),
        ConditionSpec(R.COND_RUNNING, "True", R.TRIALS_RUNNING, "2 trials running"),
        ConditionSpec(R.COND_SUSPENDED, "False", R.NOT_SUSPENDED, ""),
        ConditionSpec(R.COND_SUCCEEDED, "False", R.TRIALS_IN_PROGRESS, ""),
        ConditionSpec(R.COND_FAILED, "False", R.TRIALS_IN_PROGRESS, ""),
        ConditionSpec(R.COND_PODS_HEALTHY, "True", R.PODS_HEALTHY, ""),
    ]


@pytest.mark.parametrize("outcome", ["Succeeded", "Failed"])
def test_a_finished_study_sets_its_outcome_condition(outcome: StudyState) -> None:
    verdict = StudyVerdict(outcome, R.MAX_TRIALS_REACHED, "all 4 trials were launched")
    got = conditions_of(verdict)
    assert got[outcome] == ConditionSpec(outcome, "True", verdict.reason, verdict.message)
    other = "Failed" if outcome == "Succeeded" else "Succeeded"
    assert got[other].status == "False"
    assert got["Running"] == ConditionSpec("Running", "False", verdict.reason, "0 trials running")


def test_an_invalid_study_is_not_ready() -> None:
    verdict = StudyVerdict("Invalid", R.IMMUTABLE_FIELD_CHANGED, IMMUTABLE_FIELD_MESSAGE)
    got = conditions_of(verdict, invalid=True, running=1)
    assert got["Ready"].status == "False"
    assert got["Invalid"] == ConditionSpec(
        "Invalid", "True", R.IMMUTABLE_FIELD_CHANGED, IMMUTABLE_FIELD_MESSAGE
    )
    assert got["Running"].status == "True"  # running trials finish


def test_a_suspended_study_says_so() -> None:
    verdict = StudyVerdict("Suspended", R.STUDY_SUSPENDED, "spec.suspend is true")
    got = conditions_of(verdict, suspended=True)
    assert got["Suspended"] == ConditionSpec("Suspended", "True", R.STUDY_SUSPENDED, "")


def test_pods_healthy_names_image_pulls_before_scheduling() -> None:
    unschedulable = ObservedJob("j-0", 0, 0, "Active", waiting_reason="Unschedulable")
    pull = ObservedJob(
        "j-1", 1, 0, "Active", waiting_reason="ErrImagePull", waiting_message="not found"
    )
    assert pods_healthy_condition(()) == ConditionSpec(
        R.COND_PODS_HEALTHY, "True", R.PODS_HEALTHY, ""
    )
    assert pods_healthy_condition([unschedulable]) == ConditionSpec(
        R.COND_PODS_HEALTHY,
        "False",
        R.UNSCHEDULABLE,
        "1 trial pods cannot start; Job j-0: Unschedulable",
    )
    assert pods_healthy_condition([unschedulable, pull]) == ConditionSpec(
        R.COND_PODS_HEALTHY,
        "False",
        R.IMAGE_PULL_FAILED,
        "2 trial pods cannot start; Job j-1: ErrImagePull not found",
    )


# --- Events -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "now", "event"),
    [
        (None, "Running", EventSpec("Normal", R.STUDY_STARTED, "Study started: m")),
        ("Pending", "Running", EventSpec("Normal", R.STUDY_STARTED, "Study started: m")),
        ("Suspended", "Running", None),  # resumed: not a start
        ("Running", "Running", None),
        (None, "Pending", None),
        ("Running", "Succeeded", EventSpec("Normal", R.STUDY_SUCCEEDED, "Study succeeded: m")),
        ("Running", "Failed", EventSpec("Warning", R.STUDY_FAILED, "Study failed: m")),
        ("Failed", "Failed", None),  # posted once
        ("Running", "Invalid", EventSpec("Warning", R.IMMUTABLE_FIELD_CHANGED, "m")),
        ("Running", "Suspended", EventSpec("Normal", R.STUDY_SUSPENDED, "m")),
    ],
)
def test_study_events_on_state_changes(
    previous: str | None, now: StudyState, event: EventSpec | None
) -> None:
    reason = {"Invalid": R.IMMUTABLE_FIELD_CHANGED, "Suspended": R.STUDY_SUSPENDED}.get(now, "X")
    got = study_events(previous, StudyVerdict(now, reason, "m"))
    assert got == ((event,) if event else ())


# --- times, the projected ledger, requeue ------------------------------------------------------


def test_completion_time_is_set_once_when_the_study_ends() -> None:
    assert completion_time("Running", {}, T0) is None
    assert completion_time("Succeeded", {}, T0) == T0
    kept = {"completionTime": "2026-02-01T00:00:00Z"}
    assert completion_time("Failed", kept, T0) == datetime(2026, 2, 1, tzinfo=UTC)


def test_projected_ledger_applies_tells_and_relaunches() -> None:
    t0 = TrialRecord(0, "RUNNING", {"lr": 0.1}, attempt=0, job_created=0, datetime_start=T0)
    t1 = TrialRecord(1, "RUNNING", {"lr": 0.2})
    t2 = TrialRecord(2, "COMPLETE", {"lr": 0.3}, (1.0,))
    ledger = LedgerSnapshot("s", (t0, t1, t2), "hash", {2: TrialUsage(1, 5.0)})
    assert projected_ledger(ledger, {}, {}) is ledger
    got = projected_ledger(ledger, {0: Tell(0, "FAIL", None, R.EXIT_CODE, "boom")}, {1: 1})
    assert got.trials == (
        TrialRecord(
            0, "FAIL", {"lr": 0.1}, attempt=0, job_created=0, fail_reason=R.EXIT_CODE,
            datetime_start=T0,
        ),
        TrialRecord(1, "RUNNING", {"lr": 0.2}, attempt=1),
        t2,
    )  # fmt: skip
    assert (got.study_name, got.spec_hash, got.usage) == ("s", "hash", ledger.usage)


def test_earliest_ignores_missing_and_infinite_delays() -> None:
    assert earliest() is None
    assert earliest(None, math.inf) is None
    assert earliest(30.0, None, 0.0, 12.5) == 0.0


# --- a reconcile that raised --------------------------------------------------------------------


def test_reconcile_backoff_doubles_from_two_seconds_to_five_minutes() -> None:
    assert [reconcile_backoff(n) for n in range(1, 11)] == [
        2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip
    assert reconcile_backoff(10_000) == 300.0
    assert reconcile_backoff(0) == 2.0


def test_redact_removes_secrets_and_url_credentials() -> None:
    text = "connect postgresql+psycopg2://kubetune:s3cret@db:5432/kubetune failed; key=k3y-k3y"
    got = redact(text, ["k3y-k3y", ""])
    assert got == "connect postgresql+psycopg2://***@db:5432/kubetune failed; key=***"
    assert redact("see https://example.com/a@b", ()) == "see https://example.com/a@b"


class FakeApiError(Exception):
    """Shaped like kubernetes.client.ApiException: str() carries the HTTP headers."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(
            f"({status})\nReason: {reason}\nHTTP response headers: {{'Audit-Id': 'x'}}"
        )
        self.status, self.reason, self.body = status, reason, body


def test_describe_error_is_one_line_without_secrets_or_headers() -> None:
    err = RuntimeError("cannot open\n  sqlite:///x.db as user:pw@host\tkey=abcdefabcdef")
    assert describe_error(err, secrets=["abcdefabcdef"]) == (
        "RuntimeError: cannot open sqlite:///x.db as user:pw@host key=***"
    )
    api = FakeApiError(500, "Internal Server Error", '{"message": "etcd is sad"}')
    assert describe_error(api) == "FakeApiError: (500) Internal Server Error: etcd is sad"
    assert describe_error(FakeApiError(503, "Unavailable", "not json")) == (
        "FakeApiError: (503) Unavailable"
    )
    assert describe_error(KeyError()) == "KeyError"
    long = describe_error(ValueError("x" * 5000))
    assert len(long) == MAX_ERROR_MESSAGE and long.endswith("...")


def test_reconcile_error_status_flags_reconciled_and_keeps_the_rest() -> None:
    previous = {
        "observedGeneration": 3,
        "state": "Running",
        "message": "2 trials running",
        "trials": {"total": 2, "running": 2},
        "startTime": "2026-03-01T11:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": R.TRIALS_RUNNING,
             "message": "", "lastTransitionTime": "2026-03-01T11:00:00Z"},
            {"type": "Reconciled", "status": "True", "reason": R.RECONCILE_SUCCEEDED,
             "message": "", "lastTransitionTime": "2026-03-01T11:00:00Z"},
            {"type": "Running", "status": "True", "reason": R.TRIALS_RUNNING,
             "message": "2 trials running", "lastTransitionTime": "2026-03-01T11:00:00Z"},
        ],
    }  # fmt: skip
    got = reconcile_error_status(
        previous, now=T0, message="RuntimeError: boom", failures=3, retry_in=8.0
    )
    cond = {c["type"]: c for c in got["conditions"]}
    detail = "RuntimeError: boom (failed 3 times in a row; next try in 8 s)"
    for ctype in ("Ready", "Reconciled"):
        assert (cond[ctype]["status"], cond[ctype]["reason"]) == ("False", R.RECONCILE_ERROR)
        assert cond[ctype]["message"] == detail
        assert cond[ctype]["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert cond["Running"]["status"] == "True"
    assert cond["Running"]["lastTransitionTime"] == "2026-03-01T11:00:00Z"
    assert (got["observedGeneration"], got["state"], got["trials"]) == (
        3, "Running", {"total": 2, "running": 2},
    )  # fmt: skip
    assert got["startTime"] == "2026-03-01T11:00:00Z"
    once = reconcile_error_status({}, now=T0, message="E", failures=1, retry_in=2.0)
    assert once["state"] == "Pending"
    assert once["conditions"][-1]["message"] == "E (failed once; next try in 2 s)"


def test_storage_error_status_keeps_the_reconciled_condition() -> None:
    previous = {
        "conditions": [
            {"type": "Reconciled", "status": "True", "reason": R.RECONCILE_SUCCEEDED,
             "message": "", "lastTransitionTime": "2026-03-01T11:00:00Z"},
        ],
    }  # fmt: skip
    got = storage_error_status(previous, generation=None, now=T0, message="down")
    cond = {c["type"]: c for c in got["conditions"]}
    assert cond["Reconciled"]["status"] == "True"
    assert cond["StorageReachable"]["status"] == "False"
