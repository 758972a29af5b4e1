"""Per-trial Events: what one trial's outcome says, and how many such Events a study gets.

One message rule for every way a trial ends: told by the reconcile (TerminationMessage mode,
failed Jobs) or by the trainer through the report API (Reporter mode).

Volume: kopf's ``kopf.event`` creates a new Event object on every call and aggregates nothing,
so a 10,000-trial study would leave tens of thousands of Event objects. :class:`EventBudget`
follows client-go's EventCorrelator instead: per study and reason, the first ``limit`` Events
are posted one by one; every later one is folded into a single aggregate Event per (study,
reason), whose ``count`` and ``lastTimestamp`` grow and whose message is the latest one,
prefixed ``(combined from similar events): `` as Kubernetes does. A study thus has at most
``limit + 1`` Event objects per per-trial reason, whatever its number of trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune.reconcile._actions import EventSpec
from kubetune.status import TrialRecord

__all__ = [
    "AGGREGATED_REASONS",
    "COMBINED_PREFIX",
    "DEFAULT_EVENTS_PER_REASON",
    "EventBudget",
    "FoldEvent",
    "PostEvent",
    "aggregate_event_name",
    "outcome_event",
    "reported_outcome_event",
]

#: Reasons posted once per trial (or attempt): the ones whose volume grows with the study.
AGGREGATED_REASONS = frozenset(
    {
        R.TRIAL_LAUNCHED,
        R.TRIAL_RETRIED,
        R.TRIAL_COMPLETED,
        R.TRIAL_PRUNED,
        R.TRIAL_FAILED,
        R.JOB_REJECTED,
    }
)
#: Events posted one by one per study and reason before they aggregate (client-go's default).
DEFAULT_EVENTS_PER_REASON = 10
#: What Kubernetes' own aggregator puts before the latest message of an aggregate Event.
COMBINED_PREFIX = "(combined from similar events): "


def outcome_event(
    number: int,
    state: Literal["COMPLETE", "PRUNED", "FAIL"],
    *,
    values: Sequence[float] | None = None,
    reason: str | None = None,
    message: str = "",
    last_step: int | None = None,
) -> EventSpec:
    """The Event for a finished trial: its number, and its values, step or fail reason."""
    if state == "COMPLETE":
        return EventSpec(
            "Normal",
            R.TRIAL_COMPLETED,
            f"Trial {number} completed with values {list(values or ())}",
        )
    if state == "PRUNED":
        at = f" at step {last_step}" if last_step is not None else ""
        return EventSpec("Normal", R.TRIAL_PRUNED, f"Trial {number} was pruned{at}")
    first_line = message.splitlines()[0] if message else ""
    return EventSpec("Warning", R.TRIAL_FAILED, f"Trial {number} failed ({reason}): {first_line}")


def reported_outcome_event(trial: TrialRecord) -> EventSpec | None:
    """The Event for a trial the trainer finished through the report API (None if RUNNING).

    A failure's reason is the trainer's own text (the ledger's ``kubetune:fail_reason``).
    """
    if trial.state == "COMPLETE":
        return outcome_event(trial.number, "COMPLETE", values=trial.values)
    if trial.state == "PRUNED":
        return outcome_event(trial.number, "PRUNED", last_step=trial.last_step)
    if trial.state == "FAIL":
        return outcome_event(
            trial.number, "FAIL", reason="reported by the trainer", message=trial.fail_reason or ""
        )
    return None


def aggregate_event_name(study: str, uid: str, reason: str) -> str:
    """The aggregate Event's fixed name: one per study object (uid) and reason."""
    return f"{study}.{uid[:8] or 'study'}.{reason.lower()}"


@dataclass(frozen=True)
class PostEvent:
    """Post this Event as a new object."""

    event: EventSpec


@dataclass(frozen=True)
class FoldEvent:
    """Fold this Event into the aggregate Event ``name`` (count + 1, latest message)."""

    event: EventSpec
    name: str


@dataclass
class EventBudget:
    """One study's per-trial Events counted by reason: says post (the first ``limit``) or fold.

    Pure and in memory (the shell keeps one per study, with the study's other state): a
    restarted operator posts up to ``limit`` more one by one, then folds into the aggregate
    Event it finds (the shell reads its count back).
    """

    limit: int = DEFAULT_EVENTS_PER_REASON
    _posted: dict[str, int] = field(default_factory=dict)

    def admit(self, event: EventSpec, *, study: str, uid: str) -> PostEvent | FoldEvent:
        if event.reason not in AGGREGATED_REASONS:
            return PostEvent(event)
        posted = self._posted.get(event.reason, 0)
        if posted < self.limit:
            self._posted[event.reason] = posted + 1
            return PostEvent(event)
        return FoldEvent(event, aggregate_event_name(study, uid, event.reason))
