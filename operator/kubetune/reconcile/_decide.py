"""The reconcile decision: a short composition of the named steps in the sibling modules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubetune.observed_job import ObservedJob, parse_time
from kubetune.reconcile._actions import (
    Action,
    Decision,
    EventSpec,
    LaunchParked,
    LaunchTrials,
    ParkTrials,
    ReleaseParked,
    Tell,
)
from kubetune.reconcile._ahead import LaunchPlan, ask_ahead, plan_launches, split_parked
from kubetune.reconcile._budget import (
    Stop,
    free_slots,
    goal_reached,
    launch_room,
    seconds_to_deadline,
    stop_reason,
    tally_trials,
    trial_cap,
)
from kubetune.reconcile._gpu import GpuAccount, gpu_account
from kubetune.reconcile._observed import ExpectedJob, with_expectations
from kubetune.reconcile._study import (
    Halt,
    StudyVerdict,
    completion_time,
    halt_trials,
    job_suspensions,
    projected_ledger,
    study_conditions,
    study_events,
    study_state,
)
from kubetune.reconcile._trials import (
    TrialOutcomes,
    TrialRules,
    classify_trials,
    stale_job_deletions,
    trial_events,
    trial_states,
)
from kubetune.status import (
    ConditionSpec,
    LedgerSnapshot,
    TrialRecord,
    TrialStateName,
    build_status,
)

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = ["DEFAULT_IMAGE_PULL_GRACE_SECONDS", "decide", "earliest", "spec_changed", "spec_hash"]

DEFAULT_IMAGE_PULL_GRACE_SECONDS = 300.0


def spec_hash(spec: TuningStudySpec) -> str:
    """A hash of the parts an Optuna study cannot change (search space, objectives, sampler)."""
    text = json.dumps(spec.immutable_view(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_changed(spec: TuningStudySpec, ledger: LedgerSnapshot) -> bool:
    """The immutable parts differ from those the Optuna study was created with."""
    return ledger.spec_hash is not None and ledger.spec_hash != spec_hash(spec)


def earliest(*delays: float | None) -> float | None:
    """The soonest finite delay, None when there is none."""
    finite = [d for d in delays if d is not None and math.isfinite(d)]
    return min(finite) if finite else None


def decide(
    spec: TuningStudySpec,
    generation: int | None,
    jobs: Sequence[ObservedJob],
    ledger: LedgerSnapshot,
    now: datetime,
    *,
    previous_status: Mapping[str, Any] | None = None,
    expected: Collection[ExpectedJob] = (),
    gone: Collection[tuple[int, int]] = (),
    image_pull_grace_seconds: float = DEFAULT_IMAGE_PULL_GRACE_SECONDS,
    grid_trials: int | None = None,
    reports_since: datetime | None = None,
) -> Decision:
    """Compute the actions and the new status for one study (see the package docstring).

    ``jobs`` are the study's Jobs as the watch shows them; ``expected`` are Jobs created since
    that the watch has not shown yet (each counts as a live Job of its trial's attempt);
    ``gone`` are the ``(trial, attempt)`` whose Job a direct read answered 404 for, after a
    :class:`VerifyJobGone`: only those count as deleted (the watch alone can lag).
    ``grid_trials``: for a Grid study, the trials it runs before its points would repeat
    (``kubetune.sampling.grid_trials``: the core knows no Optuna); None for other samplers.
    ``reports_since``: when the report API began taking reports (heartbeat silence before it
    does not count).
    """
    prev = dict(previous_status or {})
    start = parse_time(prev.get("startTime")) or now
    rules = TrialRules.from_spec(spec, image_pull_grace_seconds, reports_since)
    observed = with_expectations(jobs, expected)
    ledger, parked = _without_parked(ledger, observed)
    j = _judge_trials(spec, observed, ledger, rules, now, start=start, gone=gone, grid=grid_trials)
    plan, running, verdict, conditions = _plan_study(
        spec, j, ledger, grid_trials, [t.number for t in parked if t.asked]
    )
    status = build_status(
        previous=prev,
        generation=generation,
        now=now,
        ledger=projected_ledger(ledger, j.tells, j.outcomes.relaunched),
        directions=[o.direction for o in spec.objectives],
        max_trials=trial_cap(spec.budget, grid_trials),
        state=verdict.state,
        message=verdict.message,
        conditions=conditions,
        gpu_used=j.gpu.used,
        gpu_saved=j.gpu.saved,
        start_time=start,
        completion_time=completion_time(verdict.state, prev, now),
    )
    actions = (*_trial_actions(spec, j, ledger), *_launch_actions(plan, parked))
    deadline = seconds_to_deadline(spec.budget, start, now) if j.stop is None else None
    return Decision(
        actions=actions,
        status=status,
        events=(*j.events, *study_events(prev.get("state"), verdict)),
        requeue_after=earliest(*j.outcomes.requeue_after, deadline),
        state=verdict.state,
        occupied=running,
    )


def _without_parked(
    ledger: LedgerSnapshot, jobs: Sequence[ObservedJob]
) -> tuple[LedgerSnapshot, tuple[TrialRecord, ...]]:
    """The ledger the rules judge (launched trials only), and the parked trials."""
    trials, parked = split_parked(ledger.trials, jobs)
    return (dataclasses.replace(ledger, trials=tuple(trials)) if parked else ledger), parked


@dataclass(frozen=True)
class _Judged:
    """Every trial judged: outcomes, GPU account, why the study stops, trials it halts."""

    outcomes: TrialOutcomes
    halt: Halt
    gpu: GpuAccount
    stop: Stop | None
    #: The live Jobs, less those of halted trials.
    jobs: tuple[ObservedJob, ...]
    tells: dict[int, Tell]
    states: dict[int, TrialStateName]

    @property
    def events(self) -> tuple[EventSpec, ...]:
        o = self.outcomes
        return (*o.events, *trial_events(o.tells.values()), *self.halt.events)


def _judge_trials(
    spec: TuningStudySpec,
    jobs: Sequence[ObservedJob],
    ledger: LedgerSnapshot,
    rules: TrialRules,
    now: datetime,
    *,
    start: datetime,
    gone: Collection[tuple[int, int]],
    grid: int | None,
) -> _Judged:
    """Classify the trials, account GPU time, find the stop reason, halt what it stops."""
    gpus = spec.trial.gpus()
    outcomes = classify_trials(ledger.trials, jobs, rules, now, gone)
    states = trial_states(ledger.trials, outcomes.tells)
    gpu = gpu_account(ledger.trials, jobs, ledger.usage, states, gpus=gpus, now=now)
    stop = stop_reason(
        spec.budget,
        tally_trials(states, jobs),
        gpu_used=gpu.used,
        start_time=start,
        now=now,
        grid_trials=grid,
        goal=goal_reached(ledger.trials, outcomes.tells, spec.objectives),
    )
    halt = halt_trials(ledger.trials, outcomes.tells, jobs, gpu.usage, stop, gpus=gpus, now=now)
    if halt.trials:  # a stopped trial needs nothing else: no retry, no missing Job created
        kept = [t for t in ledger.trials if t.number not in halt.trials]
        outcomes = classify_trials(kept, jobs, rules, now, gone)
        jobs = tuple(j for j in jobs if j.trial not in halt.trials)
    tells = {**outcomes.tells, **halt.tells}
    states = trial_states(ledger.trials, tells)
    return _Judged(outcomes, halt, gpu, stop, tuple(jobs), tells, states)


def _plan_study(
    spec: TuningStudySpec,
    j: _Judged,
    ledger: LedgerSnapshot,
    grid_trials: int | None,
    parked: Sequence[int],
) -> tuple[LaunchPlan, int, StudyVerdict, list[ConditionSpec]]:
    """(what fills the free slots, slots then in use, the study's state, its conditions)."""
    tally = tally_trials(j.states, j.jobs)
    invalid = spec_changed(spec, ledger)
    blocked = invalid or j.stop is not None or spec.suspend
    plan = plan_launches(
        free_slots(spec.budget, tally),
        launch_room(spec.budget, tally, grid_trials),
        parked,
        ahead=ask_ahead(spec),
        blocked=blocked,
    )
    running = len(tally.occupied) + plan.launched
    verdict = study_state(tally, j.stop, running=running, invalid=invalid, suspended=spec.suspend)
    conditions = study_conditions(
        verdict, invalid=invalid, suspended=spec.suspend, running=running, stuck=j.outcomes.stuck
    )
    return plan, running, verdict, list(conditions)


def _launch_actions(plan: LaunchPlan, parked: Sequence[TrialRecord]) -> tuple[Action, ...]:
    """The plan as actions; a parked trial launches with its stored parameters. One whose ask
    was cut short (``asked`` False) goes back to WAITING: Optuna's next ask finishes it."""
    params = {t.number: t.params for t in parked}
    cut = [t.number for t in parked if not t.asked]
    out: list[Action] = [ReleaseParked(n) for n in (*cut, *plan.release)]
    out += [LaunchParked(n, dict(params[n])) for n in plan.parked]
    if plan.new:
        out.append(LaunchTrials(plan.new))
    if plan.park:
        out.append(ParkTrials(plan.park))
    return tuple(out)


def _trial_actions(spec: TuningStudySpec, j: _Judged, ledger: LedgerSnapshot) -> tuple[Action, ...]:
    """What to do about the trials and their Jobs (launches come after, from the budget)."""
    settled = tuple(r for r in j.gpu.settled if r.trial not in j.halt.usage)
    suspensions = job_suspensions(
        j.jobs, j.states, suspend=spec.suspend, queued=spec.trial.queue_name is not None
    )
    return (
        *j.outcomes.actions,
        *j.halt.actions,
        *stale_job_deletions(j.jobs, ledger.trials),
        *settled,
        *suspensions,
    )
