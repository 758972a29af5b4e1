"""Ask-ahead: trials asked of Optuna before a slot frees, parked until one does.

A free slot is then filled by creating a Job for a trial whose parameters are already stored,
with no ask on the launch path (an ask is 40-70 ms of CPU and SQL per trial; a burst of
free slots waited for one ask after another). A parked trial is RUNNING in Optuna with
``kubetune:parked`` set and no Job ever created. The rules that keep it safe:

- it holds no slot and is not "launched": ``maxTrials`` counts launched trials, and a trial is
  parked only inside the room ``maxTrials`` (or the grid) leaves, so every parked trial can
  still run;
- it is never failed: the orphan rule (create a missing Job), the halt of a stopped study and
  the tally all skip it; once any Job of it is seen (or expected, just created) it is an
  ordinary running trial;
- it is released (back to WAITING, parameters kept: Optuna's next ask pops it and runs those
  parameters) when the study stops launching, is suspended or invalid, when ``maxTrials``
  shrinks below what is launched and parked, or when ``askAhead`` shrinks;
- a restarted operator finds it in the database and launches it like any parked trial; its Job
  name is fixed by (study, trial, attempt), so a create repeated after a crash is refused by
  the API server, and nothing runs twice.

How many: ``budget.askAhead`` when set; otherwise, for samplers whose proposals do not depend
on results (Random, QMC, Grid: parking costs them no information), one per slot up to 16 (a
parked trial is a RUNNING trial that Optuna's cache and the ledger hold in memory: at 100
studies x 50 slots, one per slot was 5,000 more); for samplers that learn from results (TPE,
CMA-ES, GP, NSGA-II) one per eight slots, none in a sequential study: each parked trial is
proposed without the results that arrive while it waits, as if the study ran one trial more
at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubetune.observed_job import ObservedJob
from kubetune.status import TrialRecord

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = ["LaunchPlan", "ask_ahead", "plan_launches", "split_parked"]

#: Samplers whose next proposal does not depend on the results told so far.
RESULT_BLIND_SAMPLERS = frozenset({"Random", "QMC", "Grid"})
#: The most trials a study keeps asked ahead unless ``askAhead`` says otherwise.
MAX_DEFAULT_ASK_AHEAD = 16


def ask_ahead(spec: TuningStudySpec) -> int:
    """How many trials the study keeps asked ahead (see the module docstring)."""
    parallelism = spec.budget.parallelism
    if spec.budget.ask_ahead is not None:
        return min(spec.budget.ask_ahead, parallelism)
    if spec.sampler.type in RESULT_BLIND_SAMPLERS:
        return min(parallelism, MAX_DEFAULT_ASK_AHEAD)
    return 0 if parallelism == 1 else math.ceil(parallelism / 8)


def split_parked(
    trials: Sequence[TrialRecord], jobs: Iterable[ObservedJob]
) -> tuple[Sequence[TrialRecord], tuple[TrialRecord, ...]]:
    """(the trials the rules judge, the parked trials in ask order); ``trials`` itself when
    none is parked.

    A trial stored as parked that has any Job, seen or expected, was launched (its
    ``kubetune:job_created`` mark is written after the create): it is judged as running.
    """
    marked = [t for t in trials if t.parked]
    if not marked:
        return trials, ()
    with_job = {j.trial for j in jobs}
    parked = tuple(sorted((t for t in marked if t.number not in with_job), key=lambda t: t.number))
    numbers = {t.number for t in parked}
    return tuple(t for t in trials if t.number not in numbers), parked


@dataclass(frozen=True)
class LaunchPlan:
    """What fills the free slots, and what stays asked ahead."""

    #: Parked trials to launch now, oldest first.
    parked: tuple[int, ...] = ()
    #: New trials to ask and launch.
    new: int = 0
    #: Trials to ask and park once the launches are done.
    park: int = 0
    #: Parked trials to return to WAITING (the study stopped, or its room shrank).
    release: tuple[int, ...] = ()

    @property
    def launched(self) -> int:
        return len(self.parked) + self.new


def plan_launches(
    free: int, room: int, parked: Sequence[int], *, ahead: int, blocked: bool
) -> LaunchPlan:
    """Fill ``free`` slots, parked trials first, within ``room`` (trials the budget still
    allows beyond those launched); keep ``ahead`` parked. While ``blocked`` nothing launches
    and every parked trial is released. The counts are never negative (``free_slots``,
    ``launch_room`` and :func:`ask_ahead` say so), and so is every count planned."""
    if blocked:
        return LaunchPlan(release=tuple(parked))
    keep = parked[: min(room, ahead + free)]
    take = tuple(keep[:free])
    new = min(free - len(take), room - len(keep))
    waiting = len(keep) - len(take)
    park = min(ahead - waiting, room - len(keep) - new)
    return LaunchPlan(parked=take, new=new, park=park, release=tuple(parked[len(keep) :]))
