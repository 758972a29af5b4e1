"""Study-level steps: its state, its conditions, the Events of a state change, its status."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.observed_job import JobPhase, ObservedJob, parse_time
from kubetune.reconcile._actions import (
    Action,
    DeleteJob,
    EventSpec,
    RecordUsage,
    SuspendJob,
    Tell,
)
from kubetune.reconcile._budget import Stop, TrialTally
from kubetune.reconcile._observed import is_active, job_seconds
from kubetune.status import (
    ConditionSpec,
    LedgerSnapshot,
    StudyState,
    TrialRecord,
    TrialStateName,
    TrialUsage,
    build_status,
)

__all__ = [
    "IMMUTABLE_FIELD_MESSAGE",
    "MAX_ERROR_MESSAGE",
    "MAX_RECONCILE_BACKOFF_SECONDS",
    "RECONCILE_BACKOFF_SECONDS",
    "Halt",
    "StudyVerdict",
    "completion_time",
    "describe_error",
    "halt_trials",
    "job_suspensions",
    "pods_healthy_condition",
    "projected_ledger",
    "reconcile_backoff",
    "reconcile_error_status",
    "redact",
    "storage_error_status",
    "study_conditions",
    "study_events",
    "study_state",
]

IMMUTABLE_FIELD_MESSAGE = (
    "searchSpace, objectives and sampler cannot change after the study started; "
    "revert them or create a new TuningStudy (running trials finish, no new ones start)"
)


@dataclass(frozen=True)
class StudyVerdict:
    """The study's state, the reason for it (a CamelCase constant) and a sentence."""

    state: StudyState
    reason: str
    message: str


def study_state(
    tally: TrialTally, stop: Stop | None, *, running: int, invalid: bool, suspended: bool
) -> StudyVerdict:
    """Invalid, else finished once stopped with nothing running, else suspended, running or
    pending. ``running`` counts the trials holding a slot after this pass's launches."""
    if invalid:
        return StudyVerdict("Invalid", R.IMMUTABLE_FIELD_CHANGED, IMMUTABLE_FIELD_MESSAGE)
    if stop is not None and running == 0:
        if stop.reason == R.MAX_FAILED_TRIALS_REACHED or tally.completed == 0:
            suffix = "" if tally.completed else "; no trial completed"
            return StudyVerdict("Failed", stop.reason, stop.message + suffix)
        return StudyVerdict("Succeeded", stop.reason, stop.message)
    if suspended:
        return StudyVerdict(
            "Suspended",
            R.STUDY_SUSPENDED,
            f"spec.suspend is true; no new trials, {running} started ones hold their slots",
        )
    if stop is not None:
        return StudyVerdict("Running", stop.reason, f"{stop.message}; waiting for {running} trials")
    if running > 0 or tally.asked > 0:
        return StudyVerdict("Running", R.TRIALS_RUNNING, f"{running} trials running")
    return StudyVerdict("Pending", R.WAITING_FOR_TRIALS, "no trial launched yet")


@dataclass(frozen=True)
class Halt:
    """The running trials a halting stop ends: settle their GPU time, FAIL them with
    ``StudyStopped``, delete their Jobs; one Event says so."""

    trials: frozenset[int] = frozenset()
    actions: tuple[Action, ...] = ()
    events: tuple[EventSpec, ...] = ()

    @property
    def tells(self) -> dict[int, Tell]:
        return {a.trial: a for a in self.actions if isinstance(a, Tell)}

    @property
    def usage(self) -> dict[int, RecordUsage]:
        return {a.trial: a for a in self.actions if isinstance(a, RecordUsage)}


def halt_trials(
    trials: Sequence[TrialRecord],
    told: Mapping[int, Tell],
    jobs: Sequence[ObservedJob],
    usage: Mapping[int, TrialUsage],
    stop: Stop | None,
    *,
    gpus: float,
    now: datetime,
) -> Halt:
    """End the trials still running when ``stop`` halts the study (none otherwise).

    A trial the verdicts already finish (``told``) keeps its own end. The others fail with
    ``StudyStopped``; their live Jobs are deleted (Background propagation: the Job goes at
    once, its pods are stopped by the garbage collector) after their GPU time up to ``now`` is
    added to ``usage`` (the usage once this pass's settled Jobs are stored), with the current
    attempt counted as settled so the Job's end is never counted again.
    """
    if stop is None or not stop.halts:
        return Halt()
    halted = [t for t in trials if t.state == "RUNNING" and t.number not in told]
    if not halted:
        return Halt()
    numbers = frozenset(t.number for t in halted)
    live = [j for j in jobs if j.trial in numbers and is_active(j)]
    records: list[Action] = []
    for t in halted:
        own = [j for j in live if j.trial == t.number]
        if not own:
            continue
        prior = usage.get(t.number, TrialUsage())
        seconds = prior.gpu_seconds + sum(job_seconds(j, now) * gpus for j in own)
        attempts = max(prior.attempts, t.attempt + 1, *(j.attempt + 1 for j in own))
        records.append(RecordUsage(t.number, attempts, round(seconds, 3)))
    message = f"the study stopped ({stop.reason}): {stop.message}"
    tells = [Tell(t.number, "FAIL", None, R.STUDY_STOPPED, message) for t in halted]
    deletes = [DeleteJob(j.name, R.STUDY_STOPPED) for j in live]
    listed = ", ".join(str(n) for n in sorted(numbers))
    event = EventSpec(
        "Normal",
        R.TRIALS_STOPPED,
        f"Stopped {len(numbers)} running trials ({listed}) and deleted {len(deletes)} Jobs: "
        f"{stop.message}",
    )
    return Halt(numbers, (*records, *tells, *deletes), (event,))


def job_suspensions(
    jobs: Sequence[ObservedJob],
    states: Mapping[int, TrialStateName],
    *,
    suspend: bool,
    queued: bool,
) -> tuple[SuspendJob, ...]:
    """``spec.suspend`` reaches the running trials' Jobs: suspended while it is true, resumed
    when it is false again. Not under Kueue (``queued``): Kueue owns a queued Job's
    ``spec.suspend`` (it admits and preempts with it), so there suspend only holds launches.

    A Job whose trial already finished is left alone (its pod is on its way out).
    """
    if queued:
        return ()
    wanted: JobPhase = "Active" if suspend else "Suspended"
    return tuple(
        SuspendJob(j.name, suspend)
        for j in jobs
        if j.phase == wanted and not j.deleting and states.get(j.trial) == "RUNNING"
    )


def _flag(value: bool) -> Literal["True", "False"]:
    return "True" if value else "False"


def _outcome_condition(ctype: str, verdict: StudyVerdict) -> ConditionSpec:
    """``Succeeded`` or ``Failed``: True with the study's reason once it ended that way."""
    if verdict.state == ctype:
        return ConditionSpec(ctype, "True", verdict.reason, verdict.message)
    return ConditionSpec(ctype, "False", R.TRIALS_IN_PROGRESS, "")


def pods_healthy_condition(stuck: Sequence[ObservedJob]) -> ConditionSpec:
    """False while trial pods cannot start; an image pull problem is named before scheduling."""
    if not stuck:
        return ConditionSpec(R.COND_PODS_HEALTHY, "True", R.PODS_HEALTHY, "")
    pulls = [j for j in stuck if j.waiting_reason != "Unschedulable"]
    worst = pulls[0] if pulls else stuck[0]
    return ConditionSpec(
        R.COND_PODS_HEALTHY,
        "False",
        R.IMAGE_PULL_FAILED if pulls else R.UNSCHEDULABLE,
        f"{len(stuck)} trial pods cannot start; Job {worst.name}: "
        f"{worst.waiting_reason} {worst.waiting_message}".strip(),
    )


def study_conditions(
    verdict: StudyVerdict,
    *,
    invalid: bool,
    suspended: bool,
    running: int,
    stuck: Sequence[ObservedJob],
) -> list[ConditionSpec]:
    """Every condition the study has, in a fixed order (see docs/architecture.md)."""
    return [
        ConditionSpec(R.COND_READY, _flag(not invalid), verdict.reason, verdict.message),
        ConditionSpec(
            R.COND_INVALID,
            _flag(invalid),
            R.IMMUTABLE_FIELD_CHANGED if invalid else R.SPEC_VALID,
            verdict.message if invalid else "",
        ),
        ConditionSpec(R.COND_STORAGE_REACHABLE, "True", R.STORAGE_REACHABLE, ""),
        ConditionSpec(R.COND_RECONCILED, "True", R.RECONCILE_SUCCEEDED, ""),
        ConditionSpec(
            R.COND_RUNNING,
            _flag(running > 0),
            R.TRIALS_RUNNING if running > 0 else verdict.reason,
            f"{running} trials running",
        ),
        ConditionSpec(
            R.COND_SUSPENDED,
            _flag(suspended),
            R.STUDY_SUSPENDED if suspended else R.NOT_SUSPENDED,
            "",
        ),
        _outcome_condition(R.COND_SUCCEEDED, verdict),
        _outcome_condition(R.COND_FAILED, verdict),
        pods_healthy_condition(stuck),
    ]


_STATE_EVENTS: Mapping[StudyState, tuple[Literal["Normal", "Warning"], str, str]] = {
    "Succeeded": ("Normal", R.STUDY_SUCCEEDED, "Study succeeded: "),
    "Failed": ("Warning", R.STUDY_FAILED, "Study failed: "),
    "Invalid": ("Warning", R.IMMUTABLE_FIELD_CHANGED, ""),
    "Suspended": ("Normal", R.STUDY_SUSPENDED, ""),
}


def study_events(previous_state: object, verdict: StudyVerdict) -> tuple[EventSpec, ...]:
    """One Event when the state changes: started, succeeded, failed, invalid or suspended."""
    if verdict.state == previous_state:
        return ()
    if verdict.state == "Running":
        if previous_state in (None, "Pending"):
            return (EventSpec("Normal", R.STUDY_STARTED, f"Study started: {verdict.message}"),)
        return ()
    if verdict.state not in _STATE_EVENTS:
        return ()
    kind, reason, prefix = _STATE_EVENTS[verdict.state]
    return (EventSpec(kind, reason, prefix + verdict.message),)


def completion_time(
    state: StudyState, previous: Mapping[str, Any], now: datetime
) -> datetime | None:
    """When the study ended (kept from the previous status), None while it has not."""
    if state not in ("Succeeded", "Failed"):
        return None
    return parse_time(previous.get("completionTime")) or now


def projected_ledger(
    ledger: LedgerSnapshot, tells: Mapping[int, Tell], relaunched: Mapping[int, int]
) -> LedgerSnapshot:
    """The snapshot as it will be once the actions are applied (so the status is current)."""
    if not tells and not relaunched:
        return ledger
    trials: list[TrialRecord] = []
    for t in ledger.trials:
        tell = tells.get(t.number)
        if t.number in relaunched:
            trials.append(dataclasses.replace(t, attempt=relaunched[t.number]))
        elif tell is None:
            trials.append(t)
        else:
            trials.append(
                dataclasses.replace(
                    t, state=tell.state, values=tell.values, fail_reason=tell.reason
                )
            )
    return LedgerSnapshot(ledger.study_name, tuple(trials), ledger.spec_hash, ledger.usage)


def _kept_conditions(previous: Mapping[str, Any], replaced: Iterable[str]) -> list[ConditionSpec]:
    """The previous status's conditions, minus the types about to be replaced."""
    drop = set(replaced)
    return [
        ConditionSpec(
            str(c["type"]), c["status"], str(c.get("reason", "")), str(c.get("message", ""))
        )
        for c in previous.get("conditions") or []
        if isinstance(c, Mapping)
        and c.get("type") not in drop
        and c.get("status") in ("True", "False", "Unknown")
    ]


def _unreconciled_status(
    prev: Mapping[str, Any], *, now: datetime, message: str, conditions: list[ConditionSpec]
) -> dict[str, Any]:
    """The previous status with new conditions: the spec was not reconciled, so
    observedGeneration, the state, the counts and the times stay as they were."""
    return build_status(
        previous=prev,
        generation=prev.get("observedGeneration"),
        now=now,
        ledger=None,
        directions=(),
        max_trials=None,
        state=prev.get("state") or "Pending",
        message=prev.get("message") or message,
        conditions=conditions,
        gpu_used=0.0,
        gpu_saved=0.0,
        start_time=parse_time(prev.get("startTime")),
        completion_time=parse_time(prev.get("completionTime")),
    )


def storage_error_status(
    previous: Mapping[str, Any] | None, *, generation: int | None, now: datetime, message: str
) -> dict[str, Any]:
    """The status while the ledger is unreachable: everything else is kept as it was.

    ``generation`` is not used: the spec was not reconciled, so observedGeneration stays.
    """
    del generation
    prev = dict(previous or {})
    conditions = _kept_conditions(prev, (R.COND_STORAGE_REACHABLE, R.COND_READY))
    conditions.append(ConditionSpec(R.COND_READY, "False", R.STORAGE_ERROR, message))
    conditions.append(ConditionSpec(R.COND_STORAGE_REACHABLE, "False", R.STORAGE_ERROR, message))
    return _unreconciled_status(prev, now=now, message=message, conditions=conditions)


#: After a failed reconcile the study waits this long, twice as long after each further
#: failure in a row, at most :data:`MAX_RECONCILE_BACKOFF_SECONDS`; a success resets it.
RECONCILE_BACKOFF_SECONDS = 2.0
MAX_RECONCILE_BACKOFF_SECONDS = 300.0
#: Longest error text put in a condition or an Event.
MAX_ERROR_MESSAGE = 500
#: ``scheme://user:password@`` in any URL: the credentials go, whatever the secret list says.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]+@")


def reconcile_backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failed reconciles in a row: 2, 4, 8, ... 300."""
    doublings = min(max(failures - 1, 0), 20)
    return min(RECONCILE_BACKOFF_SECONDS * 2.0**doublings, MAX_RECONCILE_BACKOFF_SECONDS)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each secret replaced by ``***`` and the credentials of any URL removed."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def _api_error_text(error: BaseException) -> str | None:
    """``(status) reason: message`` of a Kubernetes API error, without its HTTP headers."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if not isinstance(status, int) or not isinstance(reason, str):
        return None
    text = f"({status}) {reason}"
    body = getattr(error, "body", None)
    try:
        detail = json.loads(body).get("message") if isinstance(body, str | bytes) else None
    except (ValueError, AttributeError):
        detail = None
    return f"{text}: {detail}" if isinstance(detail, str) and detail else text


def describe_error(error: BaseException, *, secrets: Iterable[str] = ()) -> str:
    """One line for a condition or an Event: the error's type and message, secrets removed,
    at most :data:`MAX_ERROR_MESSAGE` characters."""
    text = _api_error_text(error)
    if text is None:
        text = str(error)
    text = redact(" ".join(text.split()), secrets)
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= MAX_ERROR_MESSAGE else line[: MAX_ERROR_MESSAGE - 3] + "..."


def reconcile_error_status(
    previous: Mapping[str, Any] | None,
    *,
    now: datetime,
    message: str,
    failures: int,
    retry_in: float,
) -> dict[str, Any]:
    """The status after a reconcile raised: ``Reconciled`` and ``Ready`` are False with reason
    ``ReconcileError``; everything else is kept as it was (nothing was reconciled)."""
    prev = dict(previous or {})
    times = "once" if failures == 1 else f"{failures} times in a row"
    detail = f"{message} (failed {times}; next try in {retry_in:.0f} s)"
    conditions = _kept_conditions(prev, (R.COND_RECONCILED, R.COND_READY))
    conditions.append(ConditionSpec(R.COND_READY, "False", R.RECONCILE_ERROR, detail))
    conditions.append(ConditionSpec(R.COND_RECONCILED, "False", R.RECONCILE_ERROR, detail))
    return _unreconciled_status(prev, now=now, message=detail, conditions=conditions)
