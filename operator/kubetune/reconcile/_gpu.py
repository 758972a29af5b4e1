"""GPU accounting: settle finished Jobs into the ledger, then what was used and saved."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from kubetune.observed_job import ObservedJob
from kubetune.reconcile._actions import RecordUsage
from kubetune.reconcile._observed import is_active, job_seconds
from kubetune.status import TrialRecord, TrialStateName, TrialUsage, pruning_savings

__all__ = ["GpuAccount", "gpu_account", "gpu_seconds_used", "settle_usage"]


@dataclass(frozen=True)
class GpuAccount:
    #: Usage to store for Jobs that finished since the last settlement.
    settled: tuple[RecordUsage, ...]
    used: float
    saved: float
    #: The usage per trial once ``settled`` is stored.
    usage: Mapping[int, TrialUsage] = field(default_factory=dict, compare=False)


def settle_usage(
    trials: Sequence[TrialRecord],
    jobs: Iterable[ObservedJob],
    usage: Mapping[int, TrialUsage],
    gpus: float,
    now: datetime,
) -> tuple[tuple[RecordUsage, ...], dict[int, TrialUsage]]:
    """Settle the GPU-seconds of finished Jobs whose attempts are not accounted for yet.

    A finished Job of a settled attempt costs one lookup: a long study keeps thousands of
    them (``ttlSecondsAfterFinished``), and this runs every pass."""
    unsettled: dict[int, list[ObservedJob]] = {}
    for j in jobs:
        if j.phase not in ("Succeeded", "Failed"):
            continue
        settled = usage.get(j.trial)
        if settled is None or j.attempt >= settled.attempts:
            unsettled.setdefault(j.trial, []).append(j)
    known = {t.number for t in trials} if unsettled else set()
    new_usage = dict(usage)
    actions: list[RecordUsage] = []
    for trial, fresh in sorted(unsettled.items()):
        if trial not in known:
            continue
        current = usage.get(trial, TrialUsage())
        seconds = current.gpu_seconds + sum(job_seconds(j, now) * gpus for j in fresh)
        attempts = max(j.attempt for j in fresh) + 1
        new_usage[trial] = TrialUsage(attempts, seconds)
        actions.append(RecordUsage(trial, attempts, round(seconds, 3)))
    return tuple(actions), new_usage


def gpu_seconds_used(
    usage: Mapping[int, TrialUsage], jobs: Iterable[ObservedJob], gpus: float, now: datetime
) -> float:
    """Settled usage plus what the running Jobs have run so far.

    A suspended Job holds no GPU (its pod is gone) and still shows the ``startTime`` of before
    its suspension: it adds nothing. Kubernetes resets ``startTime`` on resume, so the time an
    attempt ran before a suspension is not counted (under-, never over-counted).
    """
    settled = sum(u.gpu_seconds for u in usage.values())
    running = [j for j in jobs if is_active(j) and j.phase == "Active"]
    return settled + sum(job_seconds(j, now) * gpus for j in running)


def gpu_account(
    trials: Sequence[TrialRecord],
    jobs: Sequence[ObservedJob],
    usage: Mapping[int, TrialUsage],
    states: Mapping[int, TrialStateName],
    *,
    gpus: float,
    now: datetime,
) -> GpuAccount:
    """Settle what finished, then the study's GPU-seconds used and saved by pruning.

    A pruned trial's settlement carries its share of the saving, so the metrics count the
    same figure the status shows.
    """
    settled, after = settle_usage(trials, jobs, usage, gpus, now)
    savings = pruning_savings(after, states)
    settled = tuple(
        replace(r, saved_by_pruning=round(savings[r.trial], 3)) if r.trial in savings else r
        for r in settled
    )
    saved = sum(savings.values())  # gpu_seconds_saved(after, states)
    return GpuAccount(settled, gpu_seconds_used(after, jobs, gpus, now), saved, after)
