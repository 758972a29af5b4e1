"""The budget: when the study stops launching, and how many trials fit in the free slots."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.observed_job import ObservedJob
from kubetune.reconcile._actions import Tell
from kubetune.reconcile._observed import is_active
from kubetune.status import TrialRecord, TrialStateName

if TYPE_CHECKING:
    from kubetune.spec import Budget, Objective

__all__ = [
    "Goal",
    "Stop",
    "TrialTally",
    "free_slots",
    "goal_reached",
    "launch_room",
    "seconds_to_deadline",
    "stop_reason",
    "tally_trials",
    "trial_cap",
]


@dataclass(frozen=True)
class TrialTally:
    """Counts the budget rules read, once the trial verdicts are applied."""

    #: Trials holding a slot: RUNNING in the ledger, or with a live Job.
    occupied: frozenset[int]
    #: Trials launched: asked of Optuna (all but WAITING, i.e. enqueued and not asked yet),
    #: less those parked (asked ahead, no Job yet).
    asked: int
    failed: int
    completed: int


@dataclass(frozen=True)
class Stop:
    """Why the study launches no more trials (a condition reason) and a sentence saying so.

    ``halts``: the study ends now, stopping its running trials (failures, deadline, GPU
    budget); otherwise running trials finish first (maxTrials, the grid's end).
    """

    reason: str
    message: str
    halts: bool = False


@dataclass(frozen=True)
class Goal:
    """The first complete trial that reached every ``objectives[].goal`` given."""

    trial: int
    #: ``name value >= goal`` (or ``<=``) for each objective with a goal.
    met: tuple[str, ...]


def _reaches(value: float, direction: str, goal: float) -> bool:
    return math.isfinite(value) and (value >= goal if direction == "maximize" else value <= goal)


def goal_reached(
    trials: Sequence[TrialRecord], tells: Mapping[int, Tell], objectives: Sequence[Objective]
) -> Goal | None:
    """The lowest-numbered complete trial (tells applied) whose values reach every goal; None
    when no objective has a goal or no trial reached them all."""
    goals = [(i, o) for i, o in enumerate(objectives) if o.goal is not None]
    if not goals:
        return None
    for t in sorted(trials, key=lambda r: r.number):
        tell = tells.get(t.number)
        state, values = (tell.state, tell.values) if tell is not None else (t.state, t.values)
        if state != "COMPLETE" or values is None or len(values) != len(objectives):
            continue
        if all(_reaches(values[i], o.direction, o.goal) for i, o in goals if o.goal is not None):
            met = tuple(
                f"{o.name} {values[i]:.6g} {'>=' if o.direction == 'maximize' else '<='} "
                f"{o.goal:.6g}"
                for i, o in goals
                if o.goal is not None
            )
            return Goal(t.number, met)
    return None


def tally_trials(states: Mapping[int, TrialStateName], jobs: Iterable[ObservedJob]) -> TrialTally:
    occupied = {n for n, s in states.items() if s == "RUNNING"}
    occupied |= {j.trial for j in jobs if is_active(j)}
    counts = collections.Counter(states.values())  # every pass, over every trial: one C loop
    return TrialTally(
        occupied=frozenset(occupied),
        asked=len(states) - counts["WAITING"],
        failed=counts["FAIL"],
        completed=counts["COMPLETE"],
    )


def trial_cap(budget: Budget, grid_trials: int | None) -> int:
    """The most trials the study asks for: ``maxTrials``, or fewer when a grid runs out."""
    return budget.max_trials if grid_trials is None else min(budget.max_trials, grid_trials)


def stop_reason(
    budget: Budget,
    tally: TrialTally,
    *,
    gpu_used: float,
    start_time: datetime,
    now: datetime,
    grid_trials: int | None = None,
    goal: Goal | None = None,
) -> Stop | None:
    """The first rule that stops launches, in order: the goal, failures, trials, the grid's
    end, time, GPUs. ``grid_trials``: the trials a Grid study runs before its points repeat;
    ``goal``: the trial that reached the objectives' goals (:func:`goal_reached`)."""
    if goal is not None:
        return Stop(
            R.GOAL_REACHED,
            f"trial {goal.trial} reached the goal: {', '.join(goal.met)}",
            halts=True,
        )
    if budget.max_failed_trials is not None and tally.failed >= budget.max_failed_trials:
        return Stop(
            R.MAX_FAILED_TRIALS_REACHED,
            f"{tally.failed} trials failed (maxFailedTrials: {budget.max_failed_trials})",
            halts=True,
        )
    if tally.asked >= budget.max_trials:
        return Stop(R.MAX_TRIALS_REACHED, f"all {budget.max_trials} trials were launched")
    if grid_trials is not None and tally.asked >= grid_trials:
        return Stop(
            R.SEARCH_SPACE_EXHAUSTED,
            f"every point of the grid was tried ({grid_trials} trials; "
            f"maxTrials: {budget.max_trials})",
        )
    if budget.deadline_seconds is not None and now >= start_time + timedelta(
        seconds=budget.deadline_seconds
    ):
        return Stop(
            R.DEADLINE_REACHED,
            f"the study ran for deadlineSeconds ({budget.deadline_seconds})",
            halts=True,
        )
    if budget.max_gpu_seconds is not None and gpu_used >= budget.max_gpu_seconds:
        return Stop(
            R.GPU_BUDGET_EXHAUSTED,
            f"{gpu_used:.0f} GPU-seconds used (maxGpuSeconds: {budget.max_gpu_seconds})",
            halts=True,
        )
    return None


def seconds_to_deadline(budget: Budget, start_time: datetime, now: datetime) -> float | None:
    """Seconds until ``deadlineSeconds`` runs out (0 once past), None without a deadline."""
    if budget.deadline_seconds is None:
        return None
    end = start_time + timedelta(seconds=budget.deadline_seconds)
    return max((end - now).total_seconds(), 0.0)


def launch_room(budget: Budget, tally: TrialTally, grid_trials: int | None = None) -> int:
    """Trials the budget still allows beyond those launched (``maxTrials``, the grid)."""
    return max(0, trial_cap(budget, grid_trials) - tally.asked)


def free_slots(budget: Budget, tally: TrialTally) -> int:
    return max(0, budget.parallelism - len(tally.occupied))
