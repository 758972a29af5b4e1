"""The TuningStudy status, computed from a ledger snapshot (pure).

The ledger snapshot types live here (not in ``kubetune.ledger``) because the pure core must
read them and the layers point one way: the ledger adapter builds them, the core consumes them.

Status shape (camelCase, every field declared by ``kubetune.spec.TuningStudyStatus``):
``observedGeneration``, ``state``, ``message``, ``progress``, ``conditions`` (metav1.Condition),
``trials`` (total/running/completed/pruned/failed/retried), ``bestTrial`` + ``bestValue``
(single objective) or ``paretoFront`` (multi-objective), ``gpuSeconds`` (used,
savedByPruning), ``startTime``, ``completionTime``, ``optunaStudyName``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "MAX_PARETO",
    "ConditionSpec",
    "LedgerSnapshot",
    "StudyState",
    "TrialRecord",
    "TrialStateName",
    "TrialUsage",
    "best_trial",
    "build_status",
    "format_time",
    "gpu_seconds_saved",
    "last_progress",
    "merge_conditions",
    "pareto_front",
    "pruning_savings",
    "trial_counts",
]

#: Most trials listed in ``status.paretoFront`` (the status object must stay small).
MAX_PARETO = 20

TrialStateName = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"]
StudyState = Literal["Pending", "Running", "Succeeded", "Failed", "Invalid", "Suspended"]


@dataclass(frozen=True)
class TrialRecord:
    """One Optuna trial as the reconcile sees it."""

    number: int
    state: TrialStateName
    params: Mapping[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    #: Current attempt (``kubetune:attempt``), 0 for the first.
    attempt: int = 0
    #: Highest attempt whose Job creation was confirmed (``kubetune:job_created``), -1 if none.
    job_created: int = -1
    fail_reason: str | None = None
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None
    last_step: int | None = None
    #: False for a RUNNING trial whose ask was interrupted before its parameters were stored.
    asked: bool = True
    #: Last sign of life from the trainer (a report or heartbeat; ``kubetune:heartbeat``).
    heartbeat: datetime | None = None
    #: Asked ahead and no Job created yet (``kubetune:parked``; ``kubetune.reconcile._ahead``).
    parked: bool = False


@dataclass(frozen=True)
class TrialUsage:
    """GPU time accounted for one trial: attempts ``0 .. attempts-1`` are settled."""

    attempts: int = 0
    gpu_seconds: float = 0.0


@dataclass(frozen=True)
class LedgerSnapshot:
    """The Optuna study at one moment: all trials, the stored spec hash, GPU usage."""

    study_name: str
    trials: tuple[TrialRecord, ...] = ()
    spec_hash: str | None = None
    usage: Mapping[int, TrialUsage] = field(default_factory=dict)

    def trial(self, number: int) -> TrialRecord | None:
        return self._by_number.get(number)

    @functools.cached_property
    def _by_number(self) -> dict[int, TrialRecord]:
        """Built once per snapshot: the shell looks a trial up for every Job it observes, and
        a scan per lookup made a pass cost Jobs x trials. The first record of a number wins."""
        out: dict[int, TrialRecord] = {}
        for t in self.trials:
            out.setdefault(t.number, t)
        return out


def last_progress(ledger: LedgerSnapshot) -> float | None:
    """Unix time of the study's newest progress in the ledger: a trial started or finished, or
    a trainer reported or sent a heartbeat. It survives an operator restart, so
    ``KubetuneStudyStalled`` neither forgets a stuck study nor flags a healthy long trial."""
    stamps = [
        when.timestamp()
        for t in ledger.trials
        for when in (t.datetime_start, t.datetime_complete, t.heartbeat)
        if when is not None
    ]
    return max(stamps, default=None)


@dataclass(frozen=True)
class ConditionSpec:
    """A condition the reconcile wants; times and generations are filled in by the merge."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


def format_time(when: datetime) -> str:
    """RFC 3339 with a ``Z``, seconds precision, as Kubernetes writes times."""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Sequence[ConditionSpec],
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The new conditions list; ``lastTransitionTime`` moves only when ``status`` changes.

    Conditions not in ``wanted`` are dropped, so the list always says the current truth.
    """
    old = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out: list[dict[str, Any]] = []
    for w in wanted:
        prev = old.get(w.type)
        since = format_time(now)
        if prev is not None and prev.get("status") == w.status and prev.get("lastTransitionTime"):
            since = str(prev["lastTransitionTime"])
        cond: dict[str, Any] = {
            "type": w.type,
            "status": w.status,
            "reason": w.reason,
            "message": w.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def trial_counts(trials: Sequence[TrialRecord]) -> dict[str, int]:
    """Counts of launched trials by state (not WAITING, not parked: neither has run); a retried
    trial is one trial, its extra attempts count as ``retried``."""
    counts = {"total": 0, "running": 0, "completed": 0, "pruned": 0, "failed": 0, "retried": 0}
    key = {"RUNNING": "running", "COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}
    for t in trials:
        if t.state == "WAITING" or t.parked:
            continue
        counts["total"] += 1
        counts[key[t.state]] += 1
        counts["retried"] += max(t.attempt, 0)
    return counts


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _summary(t: TrialRecord) -> dict[str, Any]:
    return {
        "number": t.number,
        "values": [float(v) for v in (t.values or ())],
        "params": {k: _param_text(v) for k, v in sorted(t.params.items())},
    }


def _completed(trials: Sequence[TrialRecord], n: int) -> list[TrialRecord]:
    return [
        t
        for t in trials
        if t.state == "COMPLETE"
        and t.values is not None
        and len(t.values) == n
        and all(map(math.isfinite, t.values))
    ]


def best_trial(trials: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The best complete trial of a single-objective study (lowest number wins ties)."""
    done = _completed(trials, 1)
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * (t.values or (0.0,))[0], t.number))


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better_somewhere = False
    for x, y, s in zip(a, b, signs, strict=True):
        if s * x > s * y:
            return False
        if s * x < s * y:
            better_somewhere = True
    return better_somewhere


def pareto_front(trials: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """Non-dominated complete trials, by number.

    Sorted by their signed values, a trial can only be dominated by one before it, and if it
    is dominated at all, then by a member of the front: each trial is compared with the front
    found so far, newest member first (the likeliest to dominate it), not with every trial.
    With two objectives the newest member alone decides: along the front the first value
    rises and the second falls, so the newest has the lowest second value of all. Comparing
    all pairs took 5.4 s of CPU per pass for a two-objective study of 10,000 trials
    (benchmarks/README.md, large_study).
    """
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    done = _completed(trials, len(directions))
    keyed = sorted(
        done, key=lambda t: tuple(s * v for s, v in zip(signs, t.values or (), strict=True))
    )
    front: list[TrialRecord] = []
    for t in keyed:
        rivals = front[-1:] if len(signs) == 2 else reversed(front)
        if not any(_dominates(f.values or (), t.values or (), signs) for f in rivals):
            front.append(t)
    return sorted(front, key=lambda t: t.number)


def pruning_savings(
    usage: Mapping[int, TrialUsage], states: Mapping[int, TrialStateName]
) -> dict[int, float]:
    """Per settled pruned trial, the GPU-seconds it did not use: the mean settled usage of the
    complete trials less its own, never negative (0 while no complete trial is settled).

    The one formula of "saved by pruning": the status sums it, the shell counts each trial's
    share into the metrics when its Job is settled (``RecordUsage.saved_by_pruning``).
    """
    full = [usage[n].gpu_seconds for n, s in states.items() if s == "COMPLETE" and n in usage]
    mean_full = sum(full) / len(full) if full else 0.0
    return {
        n: max(0.0, mean_full - usage[n].gpu_seconds)
        for n, s in states.items()
        if s == "PRUNED" and n in usage
    }


def gpu_seconds_saved(
    usage: Mapping[int, TrialUsage], states: Mapping[int, TrialStateName]
) -> float:
    """What the pruned trials did not use, together (``status.gpuSeconds.savedByPruning``)."""
    return sum(pruning_savings(usage, states).values())


def build_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
    ledger: LedgerSnapshot | None,
    directions: Sequence[str],
    max_trials: int | None,
    state: StudyState,
    message: str,
    conditions: Sequence[ConditionSpec],
    gpu_used: float,
    gpu_saved: float,
    start_time: datetime | None,
    completion_time: datetime | None,
) -> dict[str, Any]:
    """The whole ``status`` object; fields whose input is missing keep their previous value."""
    prev = dict(previous or {})
    trials = ledger.trials if ledger is not None else ()
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "state": state,
        "message": message,
        "conditions": merge_conditions(
            prev.get("conditions") or [], conditions, now=now, generation=generation
        ),
    }
    if ledger is None:
        for key in ("trials", "bestTrial", "bestValue", "paretoFront", "gpuSeconds", "progress"):
            if key in prev:
                out[key] = prev[key]
    else:
        counts = trial_counts(trials)
        out["trials"] = counts
        finished = counts["completed"] + counts["pruned"] + counts["failed"]
        out["progress"] = f"{finished}/{max_trials}" if max_trials else str(finished)
        if len(directions) == 1:
            best = best_trial(trials, directions[0])
            out["bestTrial"] = _summary(best) if best is not None else None
            out["bestValue"] = f"{(best.values or (0.0,))[0]:.6g}" if best is not None else None
            out["paretoFront"] = []
        else:
            front = pareto_front(trials, directions)
            out["bestTrial"] = None
            out["bestValue"] = f"{len(front)} Pareto-optimal" if front else None
            out["paretoFront"] = [_summary(t) for t in front[:MAX_PARETO]]
        out["gpuSeconds"] = {"used": round(gpu_used, 3), "savedByPruning": round(gpu_saved, 3)}
        out["optunaStudyName"] = ledger.study_name
    if "optunaStudyName" not in out and prev.get("optunaStudyName"):
        out["optunaStudyName"] = prev["optunaStudyName"]
    out["startTime"] = format_time(start_time) if start_time else prev.get("startTime")
    out["completionTime"] = format_time(completion_time) if completion_time else None
    return out
