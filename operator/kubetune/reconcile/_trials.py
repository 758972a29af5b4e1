"""Per-trial steps: what each RUNNING trial needs, which Jobs must go, and what to announce."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.observed_job import ObservedJob, parse_termination_message
from kubetune.reconcile._actions import (
    Action,
    CreateJob,
    DeleteJob,
    EventSpec,
    RelaunchAttempt,
    Tell,
    VerifyJobGone,
)
from kubetune.reconcile._events import outcome_event
from kubetune.reconcile._observed import current_attempt_jobs, is_active
from kubetune.status import TrialRecord, TrialStateName

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = [
    "MAX_LOG_TAIL_CHARS",
    "POD_STATUS_GRACE_SECONDS",
    "TrialOutcomes",
    "TrialRules",
    "TrialVerdict",
    "classify_trial",
    "classify_trials",
    "stale_job_deletions",
    "trial_events",
    "trial_states",
]

#: Most characters of a failed trainer's log kept in the trial's fail message.
MAX_LOG_TAIL_CHARS = 2000


#: How long a Job seen Complete may wait for its pod's terminated status to be seen.
POD_STATUS_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class TrialRules:
    """The parts of the spec (and of the operator's settings) that judge one trial."""

    max_retries: int
    reporter: bool
    objectives: int
    active_deadline_seconds: int | None
    image_pull_grace_seconds: float
    heartbeat_timeout_seconds: int | None = None
    #: Since when the report API has been taking reports (None: unknown, always).
    reports_since: datetime | None = None

    @classmethod
    def from_spec(
        cls,
        spec: TuningStudySpec,
        image_pull_grace_seconds: float,
        reports_since: datetime | None = None,
    ) -> TrialRules:
        return cls(
            max_retries=spec.trial.max_retries,
            reporter=spec.trial.result.from_ == "Reporter",
            objectives=len(spec.objectives),
            active_deadline_seconds=spec.trial.active_deadline_seconds,
            image_pull_grace_seconds=image_pull_grace_seconds,
            heartbeat_timeout_seconds=spec.trial.heartbeat_timeout_seconds,
            reports_since=reports_since,
        )


@dataclass(frozen=True)
class TrialVerdict:
    """What one RUNNING trial needs now, and what the study's status must know about it."""

    actions: tuple[Action, ...] = ()
    events: tuple[EventSpec, ...] = ()
    #: Its Job, when the pod cannot start (unschedulable, image cannot be pulled).
    stuck: ObservedJob | None = None
    #: Look again after this many seconds (an image pull's grace period ends).
    requeue_after: float | None = None


def _fail(t: TrialRecord, reason: str, message: str) -> TrialVerdict:
    return TrialVerdict((Tell(t.number, "FAIL", None, reason, message),))


def _retry_or_fail(
    t: TrialRecord, rules: TrialRules, *, why: str, message: str, fail_reason: str
) -> TrialVerdict:
    """Relaunch the same parameters as the next attempt while attempts are left, else FAIL."""
    if t.attempt >= rules.max_retries:
        return _fail(t, fail_reason, message)
    retried = EventSpec(
        "Normal",
        R.TRIAL_RETRIED,
        f"Trial {t.number} is retried as attempt {t.attempt + 1} "
        f"of {rules.max_retries + 1}: {message}",
    )
    return TrialVerdict(
        (RelaunchAttempt(t.number, t.attempt + 1, dict(t.params), why),), (retried,)
    )


def _missing_job(t: TrialRecord, rules: TrialRules, *, gone: bool) -> TrialVerdict:
    """Never confirmed created: create it now. Created and confirmed gone (a direct read
    answered 404): an infrastructure failure. Created but only missing from the watch, which
    can lag by minutes: ask for that read first, and run nothing twice meanwhile."""
    if t.job_created < t.attempt:
        return TrialVerdict((CreateJob(t.number, t.attempt, dict(t.params)),))
    if not gone:
        return TrialVerdict((VerifyJobGone(t.number, t.attempt),))
    return _retry_or_fail(
        t,
        rules,
        why=R.JOB_DELETED,
        message=f"the Job of attempt {t.attempt} disappeared before it finished",
        fail_reason=R.JOB_DELETED,
    )


def _silent_trainer(
    t: TrialRecord, job: ObservedJob, rules: TrialRules, now: datetime
) -> TrialVerdict:
    """A running trainer silent past ``heartbeatTimeoutSeconds`` fails and its Job goes.

    Silence counts from the newest of: the last report or heartbeat (any attempt), the start
    of the trainer container now running (so a retried attempt or a resumed Job starts
    afresh, and a trainer that never sent anything is timed from its start), and the start of
    the report API (``rules.reports_since``: a trainer cannot report to an operator that is
    down, so a restart gives every trial the whole timeout again). A Job without a running
    trainer (pending, pulling, suspended) is not judged: other rules cover it.
    """
    timeout = rules.heartbeat_timeout_seconds
    if timeout is None or job.phase != "Active" or job.running_since is None:
        return TrialVerdict()
    signs = (job.running_since, t.heartbeat, rules.reports_since)
    last = max(s for s in signs if s is not None)
    silent = (now - last).total_seconds()
    if silent < timeout:
        return TrialVerdict(requeue_after=timeout - silent)
    message = (
        f"Job {job.name}: the trainer sent no report and no heartbeat for {silent:.0f} s "
        f"(heartbeatTimeoutSeconds: {timeout})"
    )
    tell = Tell(t.number, "FAIL", None, R.HEARTBEAT_TIMEOUT, message)
    return TrialVerdict((tell, DeleteJob(job.name, R.HEARTBEAT_TIMEOUT)))


def _live_job(t: TrialRecord, job: ObservedJob, rules: TrialRules, now: datetime) -> TrialVerdict:
    """A live Job is fine unless its pod cannot start (an image that never comes fails it) or
    its trainer went silent."""
    if job.waiting_reason is None:
        return _silent_trainer(t, job, rules, now)
    if job.waiting_reason == "Unschedulable" or job.waiting_since is None:
        return TrialVerdict(stuck=job)
    waited = (now - job.waiting_since).total_seconds()
    if waited < rules.image_pull_grace_seconds:
        return TrialVerdict(stuck=job, requeue_after=rules.image_pull_grace_seconds - waited)
    message = f"{job.waiting_reason}: {job.waiting_message}".strip(": ")
    tell = Tell(t.number, "FAIL", None, R.IMAGE_PULL_FAILED, message)
    return TrialVerdict((tell, DeleteJob(job.name, R.IMAGE_PULL_FAILED)), stuck=job)


def _succeeded_job(
    t: TrialRecord, job: ObservedJob, rules: TrialRules, now: datetime
) -> TrialVerdict:
    """Reporter mode: the trial should be finished already. Else: the termination message.

    The Job and its pod come from two watches: the Job can be seen Complete before its pod's
    terminated status (exit code, termination message) arrives, above all when a watch lags or
    was cut. Until ``POD_STATUS_GRACE_SECONDS`` after completion, a pod not yet seen
    terminated means "wait", not "the trainer wrote nothing".
    """
    if not rules.reporter and job.exit_code is None and job.termination_message is None:
        done = job.completion_time or now
        waited = (now - done).total_seconds()
        if waited < POD_STATUS_GRACE_SECONDS:
            return TrialVerdict(requeue_after=POD_STATUS_GRACE_SECONDS - waited)
    if rules.reporter:
        return _fail(
            t,
            R.NO_RESULT,
            f"Job {job.name} succeeded but the trainer never reported a final result "
            "(call kubetune.trial.complete())",
        )
    parsed = parse_termination_message(job.termination_message, rules.objectives)
    if isinstance(parsed, str):
        return _fail(t, R.NO_RESULT, f"Job {job.name}: {parsed}")
    return TrialVerdict((Tell(t.number, "COMPLETE", tuple(parsed), None, ""),))


def _exit_message(job: ObservedJob) -> str:
    parts = [f"Job {job.name} failed"]
    if job.exit_code is not None:
        parts[0] += f": container exited with code {job.exit_code}"
    elif job.message:
        parts[0] += f": {job.message}"
    if job.log_tail:
        parts.append(f"log tail:\n{job.log_tail[-MAX_LOG_TAIL_CHARS:]}")
    return "\n".join(parts)


def _failed_job(t: TrialRecord, job: ObservedJob, rules: TrialRules) -> TrialVerdict:
    """Disruption: retry. Deadline exceeded or the trainer's own failure: FAIL."""
    if job.failure == "Disruption":
        return _retry_or_fail(
            t,
            rules,
            why="Disruption",
            message=f"Job {job.name} was disrupted (eviction, preemption or node loss)",
            fail_reason=R.RETRIES_EXHAUSTED,
        )
    if job.failure == "DeadlineExceeded":
        return _fail(
            t,
            R.DEADLINE_EXCEEDED,
            f"Job {job.name} ran longer than activeDeadlineSeconds "
            f"({rules.active_deadline_seconds})",
        )
    return _fail(t, R.EXIT_CODE, _exit_message(job))


def classify_trial(
    t: TrialRecord,
    job: ObservedJob | None,
    rules: TrialRules,
    now: datetime,
    *,
    gone: bool = False,
) -> TrialVerdict:
    """The verdict for one RUNNING trial, given the Job of its current attempt (if any);
    ``gone``: a direct read of that Job answered 404 (see :class:`VerifyJobGone`)."""
    if not t.asked:
        return _fail(
            t,
            R.ASK_INTERRUPTED,
            "the operator stopped while asking Optuna for this trial's parameters",
        )
    if job is None:
        return _missing_job(t, rules, gone=gone)
    if is_active(job):
        return _live_job(t, job, rules, now)
    if job.phase == "Succeeded":
        return _succeeded_job(t, job, rules, now)
    return _failed_job(t, job, rules)


@dataclass(frozen=True)
class TrialOutcomes:
    """The verdicts of all RUNNING trials, in ledger order."""

    actions: tuple[Action, ...] = ()
    events: tuple[EventSpec, ...] = ()
    stuck: tuple[ObservedJob, ...] = ()
    requeue_after: tuple[float, ...] = ()

    @property
    def tells(self) -> dict[int, Tell]:
        return {a.trial: a for a in self.actions if isinstance(a, Tell)}

    @property
    def relaunched(self) -> dict[int, int]:
        """Trial number -> its new attempt."""
        return {a.trial: a.attempt for a in self.actions if isinstance(a, RelaunchAttempt)}


def classify_trials(
    trials: Sequence[TrialRecord],
    jobs: Iterable[ObservedJob],
    rules: TrialRules,
    now: datetime,
    gone: Collection[tuple[int, int]] = (),
) -> TrialOutcomes:
    """Judge every RUNNING trial against the Job of its current attempt; ``gone``: the
    ``(trial, attempt)`` whose Job a direct read found absent."""
    current = current_attempt_jobs(jobs)
    verdicts = [
        classify_trial(
            t,
            current.get((t.number, t.attempt)),
            rules,
            now,
            gone=(t.number, t.attempt) in gone,
        )
        for t in trials
        if t.state == "RUNNING"
    ]
    return TrialOutcomes(
        actions=tuple(a for v in verdicts for a in v.actions),
        events=tuple(e for v in verdicts for e in v.events),
        stuck=tuple(v.stuck for v in verdicts if v.stuck is not None),
        requeue_after=tuple(v.requeue_after for v in verdicts if v.requeue_after is not None),
    )


def stale_job_deletions(
    jobs: Iterable[ObservedJob], trials: Sequence[TrialRecord]
) -> tuple[DeleteJob, ...]:
    """Live Jobs that should not run: of unknown trials, superseded attempts, failed trials."""
    by_number = {t.number: t for t in trials}
    out: list[DeleteJob] = []
    for j in jobs:
        rec = by_number.get(j.trial)
        if not is_active(j):
            continue
        if rec is None:
            out.append(DeleteJob(j.name, "UnknownTrial"))
        elif j.attempt < rec.attempt:
            out.append(DeleteJob(j.name, "SupersededAttempt"))
        elif rec.state == "FAIL":
            out.append(DeleteJob(j.name, "TrialFailed"))
    return tuple(out)


def trial_events(tells: Iterable[Tell]) -> tuple[EventSpec, ...]:
    """One Event per trial told: completed (Normal) or failed (Warning, first message line)."""
    return tuple(
        outcome_event(t.trial, t.state, values=t.values, reason=t.reason, message=t.message)
        for t in tells
    )


def trial_states(
    trials: Sequence[TrialRecord], tells: Mapping[int, Tell]
) -> dict[int, TrialStateName]:
    """Each trial's state once the tells are applied."""
    return {t.number: (tells[t.number].state if t.number in tells else t.state) for t in trials}
