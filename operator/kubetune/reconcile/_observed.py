"""The observed Jobs as the decision reads them: which are live, and for how long they ran.

The watch lags behind the API: a Job the shell just created may not be in the index on the
next pass. Like controller-runtime's expectations, the shell passes those Jobs in explicitly
(:class:`ExpectedJob`) and the decision counts each as a live Job until the watch shows it, so
a fresh create is neither launched twice nor mistaken for a deleted Job. When to stop
expecting one (the watch delivered it, or too long has passed) is the shell's to say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kubetune.observed_job import ObservedJob

__all__ = ["ExpectedJob", "current_attempt_jobs", "is_active", "job_seconds", "with_expectations"]


@dataclass(frozen=True)
class ExpectedJob:
    """A Job the shell created that the watch has not shown yet."""

    name: str
    trial: int
    attempt: int


def with_expectations(
    jobs: Sequence[ObservedJob], expected: Iterable[ExpectedJob]
) -> tuple[ObservedJob, ...]:
    """The observed Jobs, then an active, not yet started Job for each expected one unseen."""
    seen = {j.name for j in jobs}
    unseen = {e.name: e for e in expected if e.name not in seen}
    placeholders = (ObservedJob(e.name, e.trial, e.attempt, "Active") for e in unseen.values())
    return (*jobs, *placeholders)


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
