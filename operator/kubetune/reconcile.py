"""The reconcile decision: what should exist now, given the spec, the Jobs and the ledger.

:func:`decide` is pure (no I/O, no clock: ``now`` is passed in) and level-based: it recomputes
everything from the observed world, and applying its actions then deciding again yields no
further actions. The shell (``kubetune.handlers``) observes, calls it, applies the actions.

Rules (each tested in tests/unit/test_reconcile.py):

- Slots: a trial occupies a slot while it is RUNNING in the ledger or has an active Job;
  ``parallelism`` is never exceeded, and ``maxTrials`` counts every asked trial.
- A RUNNING trial whose current attempt has no Job: if the Job was never confirmed created
  (``job_created < attempt``: the operator crashed between ask and create) it is created now;
  if it was created and is gone (deleted by hand, or its TTL ran out while the operator was
  away), the attempt counts as an infrastructure failure: retried with the same parameters
  while attempts are left, else the trial fails with ``JobDeleted``.
- A failed Job: disruption (eviction, preemption, node loss) → retry while ``attempt <
  maxRetries`` else FAIL ``RetriesExhausted``; exit code ≠ 0 → FAIL ``ExitCode`` (message with
  the exit code and the log tail); ``DeadlineExceeded`` → FAIL.
- A Job that succeeded: TerminationMessage mode → the values from the termination message
  (FAIL ``NoResult`` when missing or malformed); Reporter mode → the trial should already be
  finished through the report API; if it is still RUNNING the trainer never called
  ``complete`` → FAIL ``NoResult``.
- Pods that cannot start: ``PodsHealthy=False`` (``Unschedulable`` or ``ImagePullFailed``);
  image pull errors fail the trial after ``image_pull_grace_seconds``.
- No new trials while suspended, invalid (immutable fields changed), failed
  (``maxFailedTrials``), past the deadline or over the GPU budget; running trials finish.
  The study is Succeeded (or Failed, when no trial completed) once it stops launching and
  nothing runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.jobs import ObservedJob, parse_termination_message, parse_time
from kubetune.status import (
    ConditionSpec,
    LedgerSnapshot,
    StudyState,
    TrialRecord,
    TrialUsage,
    build_status,
)

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = [
    "DEFAULT_IMAGE_PULL_GRACE_SECONDS",
    "MAX_LOG_TAIL_CHARS",
    "Action",
    "CreateJob",
    "Decision",
    "DeleteJob",
    "EventSpec",
    "LaunchTrials",
    "RecordUsage",
    "RelaunchAttempt",
    "Tell",
    "decide",
    "spec_hash",
    "storage_error_status",
]

DEFAULT_IMAGE_PULL_GRACE_SECONDS = 300.0
MAX_LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class LaunchTrials:
    """Ask Optuna ``count`` times and create a Job for each new trial (attempt 0)."""

    count: int


@dataclass(frozen=True)
class CreateJob:
    """Create the missing Job of a RUNNING trial's current attempt (no ledger change)."""

    trial: int
    attempt: int
    params: Mapping[str, Any]


@dataclass(frozen=True)
class RelaunchAttempt:
    """Set the trial's attempt to ``attempt`` in the ledger, then create its Job."""

    trial: int
    attempt: int
    params: Mapping[str, Any]
    reason: str


@dataclass(frozen=True)
class Tell:
    """Finish a RUNNING trial in the ledger."""

    trial: int
    state: Literal["COMPLETE", "FAIL"]
    values: tuple[float, ...] | None = None
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str


@dataclass(frozen=True)
class RecordUsage:
    """Store the GPU-seconds settled for a trial (absolute values, so repeating is harmless)."""

    trial: int
    attempts: int
    gpu_seconds: float


Action = LaunchTrials | CreateJob | RelaunchAttempt | Tell | DeleteJob | RecordUsage


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    status: dict[str, Any]
    events: tuple[EventSpec, ...] = ()
    #: Reconcile again after this many seconds at the latest (deadlines, grace periods).
    requeue_after: float | None = None
    state: StudyState = "Pending"
    occupied: int = 0

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


def spec_hash(spec: TuningStudySpec) -> str:
    """A hash of the parts an Optuna study cannot change (search space, objectives, sampler)."""
    text = json.dumps(spec.immutable_view(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _job_seconds(job: ObservedJob, now: datetime) -> float:
    if job.start_time is None:
        return 0.0
    end = job.completion_time if job.phase in ("Succeeded", "Failed") else now
    if end is None:
        end = now
    return max(0.0, (end - job.start_time).total_seconds())


def _active(job: ObservedJob) -> bool:
    return job.phase in ("Active", "Suspended") and not job.deleting


def _fail_message(job: ObservedJob) -> str:
    parts = [f"Job {job.name} failed"]
    if job.exit_code is not None:
        parts[0] += f": container exited with code {job.exit_code}"
    elif job.message:
        parts[0] += f": {job.message}"
    if job.log_tail:
        tail = job.log_tail[-MAX_LOG_TAIL_CHARS:]
        parts.append(f"log tail:\n{tail}")
    return "\n".join(parts)


def _usage_actions(
    trials: Sequence[TrialRecord],
    jobs: Sequence[ObservedJob],
    usage: Mapping[int, TrialUsage],
    gpus: float,
    now: datetime,
) -> tuple[list[RecordUsage], dict[int, TrialUsage]]:
    """Settle GPU-seconds of finished Jobs not yet accounted for."""
    known = {t.number for t in trials}
    new_usage = dict(usage)
    actions: list[RecordUsage] = []
    finished: dict[int, list[ObservedJob]] = {}
    for j in jobs:
        if j.phase in ("Succeeded", "Failed") and j.trial in known:
            finished.setdefault(j.trial, []).append(j)
    for trial, done in sorted(finished.items()):
        current = usage.get(trial, TrialUsage())
        fresh = [j for j in done if j.attempt >= current.attempts]
        if not fresh:
            continue
        seconds = current.gpu_seconds + sum(_job_seconds(j, now) * gpus for j in fresh)
        attempts = max(j.attempt for j in fresh) + 1
        new_usage[trial] = TrialUsage(attempts, seconds)
        actions.append(RecordUsage(trial, attempts, round(seconds, 3)))
    return actions, new_usage


def storage_error_status(
    previous: Mapping[str, Any] | None, *, generation: int | None, now: datetime, message: str
) -> dict[str, Any]:
    """The status while the ledger is unreachable: everything else is kept as it was."""
    prev = dict(previous or {})
    conditions = [
        ConditionSpec(
            str(c["type"]), c["status"], str(c.get("reason", "")), str(c.get("message", ""))
        )
        for c in prev.get("conditions") or []
        if isinstance(c, Mapping)
        and c.get("type") not in (R.COND_STORAGE_REACHABLE, R.COND_READY)
        and c.get("status") in ("True", "False", "Unknown")
    ]
    conditions.append(ConditionSpec(R.COND_READY, "False", R.STORAGE_ERROR, message))
    conditions.append(ConditionSpec(R.COND_STORAGE_REACHABLE, "False", R.STORAGE_ERROR, message))
    out = build_status(
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
    del generation  # the spec was not reconciled, so observedGeneration does not move
    return out


def decide(
    spec: TuningStudySpec,
    generation: int | None,
    jobs: Sequence[ObservedJob],
    ledger: LedgerSnapshot,
    now: datetime,
    *,
    previous_status: Mapping[str, Any] | None = None,
    image_pull_grace_seconds: float = DEFAULT_IMAGE_PULL_GRACE_SECONDS,
) -> Decision:
    """Compute the actions and the new status for one study (see the module docstring)."""
    prev = dict(previous_status or {})
    budget = spec.budget
    max_retries = spec.trial.max_retries
    n_objectives = len(spec.objectives)
    directions = [o.direction for o in spec.objectives]
    gpus = spec.trial.gpus()
    reporter = spec.trial.result.from_ == "Reporter"

    actions: list[Action] = []
    events: list[EventSpec] = []
    requeue: list[float] = []
    by_attempt: dict[tuple[int, int], ObservedJob] = {}
    by_trial: dict[int, list[ObservedJob]] = {}
    for j in jobs:
        if not j.deleting:
            by_attempt[(j.trial, j.attempt)] = j
        by_trial.setdefault(j.trial, []).append(j)

    told: dict[int, Tell] = {}
    relaunched: dict[int, int] = {}
    stuck: list[ObservedJob] = []

    def retry_or_fail(t: TrialRecord, why: str, message: str, fail_reason: str) -> None:
        if t.attempt < max_retries:
            actions.append(RelaunchAttempt(t.number, t.attempt + 1, dict(t.params), why))
            relaunched[t.number] = t.attempt + 1
            events.append(
                EventSpec(
                    "Normal",
                    R.TRIAL_RETRIED,
                    f"Trial {t.number} is retried as attempt {t.attempt + 1} "
                    f"of {max_retries + 1}: {message}",
                )
            )
        else:
            tell = Tell(t.number, "FAIL", None, fail_reason, message)
            told[t.number] = tell
            actions.append(tell)

    for t in ledger.trials:
        if t.state != "RUNNING":
            continue
        if not t.asked:
            tell = Tell(
                t.number,
                "FAIL",
                None,
                R.ASK_INTERRUPTED,
                "the operator stopped while asking Optuna for this trial's parameters",
            )
            told[t.number] = tell
            actions.append(tell)
            continue
        job = by_attempt.get((t.number, t.attempt))
        if job is None:
            if t.job_created >= t.attempt:
                retry_or_fail(
                    t,
                    R.JOB_DELETED,
                    f"the Job of attempt {t.attempt} disappeared before it finished",
                    R.JOB_DELETED,
                )
            else:
                actions.append(CreateJob(t.number, t.attempt, dict(t.params)))
            continue
        if _active(job):
            if job.waiting_reason is not None:
                stuck.append(job)
                if job.waiting_reason != "Unschedulable" and job.waiting_since is not None:
                    waited = (now - job.waiting_since).total_seconds()
                    if waited >= image_pull_grace_seconds:
                        tell = Tell(
                            t.number,
                            "FAIL",
                            None,
                            R.IMAGE_PULL_FAILED,
                            f"{job.waiting_reason}: {job.waiting_message}".strip(": "),
                        )
                        told[t.number] = tell
                        actions.append(tell)
                        actions.append(DeleteJob(job.name, R.IMAGE_PULL_FAILED))
                    else:
                        requeue.append(image_pull_grace_seconds - waited)
            continue
        if job.phase == "Succeeded":
            if reporter:
                tell = Tell(
                    t.number,
                    "FAIL",
                    None,
                    R.NO_RESULT,
                    f"Job {job.name} succeeded but the trainer never reported a final result "
                    "(call kubetune.trial.complete())",
                )
            else:
                parsed = parse_termination_message(job.termination_message, n_objectives)
                if isinstance(parsed, str):
                    tell = Tell(t.number, "FAIL", None, R.NO_RESULT, f"Job {job.name}: {parsed}")
                else:
                    tell = Tell(t.number, "COMPLETE", tuple(parsed), None, "")
            told[t.number] = tell
            actions.append(tell)
            continue
        # Failed
        if job.failure == "Disruption":
            retry_or_fail(
                t,
                "Disruption",
                f"Job {job.name} was disrupted (eviction, preemption or node loss)",
                R.RETRIES_EXHAUSTED,
            )
        elif job.failure == "DeadlineExceeded":
            tell = Tell(
                t.number,
                "FAIL",
                None,
                R.DEADLINE_EXCEEDED,
                f"Job {job.name} ran longer than activeDeadlineSeconds "
                f"({spec.trial.active_deadline_seconds})",
            )
            told[t.number] = tell
            actions.append(tell)
        else:
            tell = Tell(t.number, "FAIL", None, R.EXIT_CODE, _fail_message(job))
            told[t.number] = tell
            actions.append(tell)

    # Jobs that should not run any more: superseded attempts, failed trials, unknown trials.
    numbers = {t.number: t for t in ledger.trials}
    for j in jobs:
        if not _active(j):
            continue
        rec = numbers.get(j.trial)
        if rec is None:
            actions.append(DeleteJob(j.name, "UnknownTrial"))
        elif j.attempt < rec.attempt:
            actions.append(DeleteJob(j.name, "SupersededAttempt"))
        elif rec.state == "FAIL":
            actions.append(DeleteJob(j.name, "TrialFailed"))

    for tell in told.values():
        if tell.state == "COMPLETE":
            events.append(
                EventSpec(
                    "Normal",
                    R.TRIAL_COMPLETED,
                    f"Trial {tell.trial} completed with values {list(tell.values or ())}",
                )
            )
        else:
            first_line = tell.message.splitlines()[0] if tell.message else ""
            events.append(
                EventSpec(
                    "Warning",
                    R.TRIAL_FAILED,
                    f"Trial {tell.trial} failed ({tell.reason}): {first_line}",
                )
            )

    # GPU accounting.
    usage_actions, usage = _usage_actions(ledger.trials, jobs, ledger.usage, gpus, now)
    actions.extend(usage_actions)
    gpu_used = sum(u.gpu_seconds for u in usage.values())
    gpu_used += sum(_job_seconds(j, now) * gpus for j in jobs if _active(j))
    states = {
        t.number: (told[t.number].state if t.number in told else t.state) for t in ledger.trials
    }
    complete_usage = [
        usage[n].gpu_seconds for n, s in states.items() if s == "COMPLETE" and n in usage
    ]
    mean_full = sum(complete_usage) / len(complete_usage) if complete_usage else 0.0
    gpu_saved = sum(
        max(0.0, mean_full - usage[n].gpu_seconds)
        for n, s in states.items()
        if s == "PRUNED" and n in usage
    )

    # Slots.
    occupied = {n for n, s in states.items() if s == "RUNNING"}
    occupied |= {j.trial for j in jobs if _active(j)}
    asked = sum(1 for s in states.values() if s != "WAITING")
    failed = sum(1 for s in states.values() if s == "FAIL")
    completed = sum(1 for s in states.values() if s == "COMPLETE")

    start_time = parse_time(prev.get("startTime")) or now
    invalid = ledger.spec_hash is not None and ledger.spec_hash != spec_hash(spec)
    stop_reason: str | None = None
    stop_message = ""
    if budget.max_failed_trials is not None and failed >= budget.max_failed_trials:
        stop_reason = R.MAX_FAILED_TRIALS_REACHED
        stop_message = f"{failed} trials failed (maxFailedTrials: {budget.max_failed_trials})"
    elif asked >= budget.max_trials:
        stop_reason = R.MAX_TRIALS_REACHED
        stop_message = f"all {budget.max_trials} trials were launched"
    elif budget.deadline_seconds is not None and now >= start_time + timedelta(
        seconds=budget.deadline_seconds
    ):
        stop_reason = R.DEADLINE_REACHED
        stop_message = f"the study ran for deadlineSeconds ({budget.deadline_seconds})"
    elif budget.max_gpu_seconds is not None and gpu_used >= budget.max_gpu_seconds:
        stop_reason = R.GPU_BUDGET_EXHAUSTED
        stop_message = f"{gpu_used:.0f} GPU-seconds used (maxGpuSeconds: {budget.max_gpu_seconds})"
    elif budget.deadline_seconds is not None:
        remaining = (start_time + timedelta(seconds=budget.deadline_seconds) - now).total_seconds()
        requeue.append(max(remaining, 0.0))

    launch = 0
    if not invalid and stop_reason is None and not spec.suspend:
        free = budget.parallelism - len(occupied)
        launch = max(0, min(free, budget.max_trials - asked))
        if launch:
            actions.append(LaunchTrials(launch))
    running_after = len(occupied) + launch

    # The study's state.
    state: StudyState
    reason: str
    message: str
    terminal = stop_reason is not None and running_after == 0
    if invalid:
        state, reason = "Invalid", R.IMMUTABLE_FIELD_CHANGED
        message = (
            "searchSpace, objectives and sampler cannot change after the study started; "
            "revert them or create a new TuningStudy (running trials finish, no new ones start)"
        )
    elif terminal and (stop_reason == R.MAX_FAILED_TRIALS_REACHED or completed == 0):
        state, reason = "Failed", stop_reason or R.STUDY_FAILED
        message = stop_message + ("" if completed else "; no trial completed")
    elif terminal:
        state, reason, message = "Succeeded", stop_reason or R.STUDY_SUCCEEDED, stop_message
    elif spec.suspend:
        state, reason = "Suspended", R.STUDY_SUSPENDED
        message = f"spec.suspend is true; {running_after} trials still running"
    elif running_after > 0 or asked > 0:
        state, reason = "Running", R.STUDY_RUNNING
        message = f"{running_after} trials running"
        if stop_reason is not None:
            reason, message = stop_reason, f"{stop_message}; waiting for {running_after} trials"
    else:
        state, reason, message = "Pending", R.WAITING_FOR_SLOTS, "no trial launched yet"

    conditions = [
        ConditionSpec(R.COND_READY, "False" if invalid else "True", reason, message),
        ConditionSpec(
            R.COND_INVALID,
            "True" if invalid else "False",
            R.IMMUTABLE_FIELD_CHANGED if invalid else R.SPEC_VALID,
            message if invalid else "",
        ),
        ConditionSpec(R.COND_STORAGE_REACHABLE, "True", R.STORAGE_OK, ""),
        ConditionSpec(
            R.COND_RUNNING,
            "True" if running_after > 0 else "False",
            R.STUDY_RUNNING if running_after > 0 else reason,
            f"{running_after} trials running",
        ),
        ConditionSpec(
            R.COND_SUSPENDED,
            "True" if spec.suspend else "False",
            R.STUDY_SUSPENDED if spec.suspend else R.STUDY_RUNNING,
            "",
        ),
        ConditionSpec(
            R.COND_SUCCEEDED,
            "True" if state == "Succeeded" else "False",
            reason if state == "Succeeded" else R.TRIALS_IN_PROGRESS,
            message if state == "Succeeded" else "",
        ),
        ConditionSpec(
            R.COND_FAILED,
            "True" if state == "Failed" else "False",
            reason if state == "Failed" else R.TRIALS_IN_PROGRESS,
            message if state == "Failed" else "",
        ),
    ]
    if stuck:
        pulls = [j for j in stuck if j.waiting_reason != "Unschedulable"]
        worst = pulls[0] if pulls else stuck[0]
        conditions.append(
            ConditionSpec(
                R.COND_PODS_HEALTHY,
                "False",
                R.IMAGE_PULL_FAILED if pulls else R.UNSCHEDULABLE,
                f"{len(stuck)} trial pods cannot start; Job {worst.name}: "
                f"{worst.waiting_reason} {worst.waiting_message}".strip(),
            )
        )
    else:
        conditions.append(ConditionSpec(R.COND_PODS_HEALTHY, "True", R.PODS_OK, ""))

    prev_state = prev.get("state")
    if state != prev_state:
        if state == "Running" and prev_state in (None, "Pending"):
            events.append(EventSpec("Normal", R.STUDY_STARTED, f"Study started: {message}"))
        elif state == "Succeeded":
            events.append(EventSpec("Normal", R.STUDY_SUCCEEDED, f"Study succeeded: {message}"))
        elif state == "Failed":
            events.append(EventSpec("Warning", R.STUDY_FAILED, f"Study failed: {message}"))
        elif state == "Invalid":
            events.append(EventSpec("Warning", R.IMMUTABLE_FIELD_CHANGED, message))
        elif state == "Suspended":
            events.append(EventSpec("Normal", R.STUDY_SUSPENDED, message))

    completion: datetime | None = None
    if state in ("Succeeded", "Failed"):
        completion = parse_time(prev.get("completionTime")) or now

    status = build_status(
        previous=prev,
        generation=generation,
        now=now,
        ledger=_with_tells(ledger, told, relaunched),
        directions=directions,
        max_trials=budget.max_trials,
        state=state,
        message=message,
        conditions=conditions,
        gpu_used=gpu_used,
        gpu_saved=gpu_saved,
        start_time=start_time,
        completion_time=completion,
    )
    positive = [r for r in requeue if math.isfinite(r)]
    return Decision(
        actions=tuple(actions),
        status=status,
        events=tuple(events),
        requeue_after=min(positive) if positive else None,
        state=state,
        occupied=running_after,
    )


def _with_tells(
    ledger: LedgerSnapshot, told: Mapping[int, Tell], relaunched: Mapping[int, int]
) -> LedgerSnapshot:
    """The snapshot as it will be once the actions are applied (so the status is current)."""
    if not told and not relaunched:
        return ledger
    trials = []
    for t in ledger.trials:
        tell = told.get(t.number)
        if t.number in relaunched:
            trials.append(dataclasses.replace(t, attempt=relaunched[t.number]))
        elif tell is None:
            trials.append(t)
        else:
            trials.append(
                TrialRecord(
                    number=t.number,
                    state=tell.state,
                    params=t.params,
                    values=tell.values,
                    attempt=t.attempt,
                    job_created=t.job_created,
                    fail_reason=tell.reason,
                    datetime_start=t.datetime_start,
                    datetime_complete=t.datetime_complete,
                    last_step=t.last_step,
                    asked=t.asked,
                )
            )
    return LedgerSnapshot(ledger.study_name, tuple(trials), ledger.spec_hash, ledger.usage)


def job_key(job: ObservedJob) -> tuple[int, int]:
    return (job.trial, job.attempt)
