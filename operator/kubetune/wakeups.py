"""Which Job and Pod watch events wake a study's loop.

Every trial brings six or seven Job and Pod events (Job created, pod created, scheduled,
running, ready, succeeded, finalizer removed, ``SuccessCriteriaMet``, Complete). Most change
nothing the decision reads, yet each woke a pass, and a pass in progress delays the one that
can launch the next trial (benchmarks/README.md, launch latency: a freed slot waited 330 ms
p50 for the pass in progress). A pass is now woken only when what
:func:`kubetune.observed_job.observe_job` reads of the object changed, or the object went. The
periodic resync still runs every pass the level-based loop needs, so a missed wake-up costs
latency, never correctness.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["WakeFilter", "job_fingerprint", "pod_fingerprint"]

_JOB_CONDITIONS = ("Complete", "Failed")
_POD_CONDITIONS = ("PodScheduled", "DisruptionTarget")


def _conditions(status: Mapping[str, Any], types: tuple[str, ...]) -> tuple[Hashable, ...]:
    return tuple(
        (
            c.get("type"),
            c.get("status"),
            c.get("reason"),
            c.get("message"),
            c.get("lastTransitionTime"),
        )
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") in types
    )


def job_fingerprint(job: Mapping[str, Any]) -> Hashable:
    """What the decision reads of a Job: its terminal conditions, times, suspension, deletion."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    return (
        _conditions(status, _JOB_CONDITIONS),
        status.get("startTime"),
        status.get("completionTime"),
        (job.get("spec") or {}).get("suspend"),
        meta.get("deletionTimestamp"),
    )


def _container_state(cs: Any) -> Hashable:
    if not isinstance(cs, Mapping):
        return None
    state = cs.get("state") or {}
    waiting, running = state.get("waiting") or {}, state.get("running") or {}
    terminated = state.get("terminated") or {}
    return (
        cs.get("name"),
        waiting.get("reason"),
        waiting.get("message"),
        running.get("startedAt"),
        terminated.get("exitCode"),
        terminated.get("message"),
    )


def pod_fingerprint(pod: Mapping[str, Any]) -> Hashable:
    """What the decision reads of a Pod: container states (why it waits, when the trainer
    started, how it ended), whether it is scheduled or disrupted, its deletion."""
    status = pod.get("status") or {}
    return (
        tuple(_container_state(cs) for cs in status.get("containerStatuses") or []),
        _conditions(status, _POD_CONDITIONS),
        (pod.get("metadata") or {}).get("deletionTimestamp"),
    )


class WakeFilter:
    """One study's memory of the last fingerprint of each of its Jobs and Pods."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Hashable] = {}

    def changed(
        self, kind: str, name: str, event_type: str | None, body: Mapping[str, Any]
    ) -> bool:
        """Whether this event can change the decision (``kind``: ``job`` or ``pod``)."""
        key = (kind, name)
        if event_type == "DELETED":
            self._last.pop(key, None)
            return True
        fingerprint = job_fingerprint(body) if kind == "job" else pod_fingerprint(body)
        if self._last.get(key) == fingerprint:
            return False
        self._last[key] = fingerprint
        return True

    def __len__(self) -> int:
        return len(self._last)
