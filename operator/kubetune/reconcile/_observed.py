"""The observed Jobs as the decision reads them: which are live, and for how long they ran."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from kubetune.jobs import ObservedJob

__all__ = ["current_attempt_jobs", "is_active", "job_seconds"]


def is_active(job: ObservedJob) -> bool:
    """Holds a slot: running or queued (suspended by Kueue), and not being deleted."""
    return job.phase in ("Active", "Suspended") and not job.deleting


def job_seconds(job: ObservedJob, now: datetime) -> float:
    """Wall time the Job ran: until it finished, or until ``now`` while it runs."""
    if job.start_time is None:
        return 0.0
    end = job.completion_time if job.phase in ("Succeeded", "Failed") else now
    if end is None:
        end = now
    return max(0.0, (end - job.start_time).total_seconds())


def current_attempt_jobs(jobs: Iterable[ObservedJob]) -> dict[tuple[int, int], ObservedJob]:
    """``(trial, attempt) -> Job`` for Jobs not being deleted (the last one wins a tie)."""
    return {(j.trial, j.attempt): j for j in jobs if not j.deleting}
