"""Posting per-trial Events with bounded volume (the shell half of ``reconcile._events``).

kopf's ``kopf.event`` creates one new Event object per call; per-trial Events (launched,
retried, completed, pruned, failed) instead pass a study's :class:`~kubetune.reconcile.
EventBudget` (kept in its ``StudyState``): the first few per reason become Events of their
own, the rest are folded into one aggregate Event per study and reason by raising its
``count`` (what client-go's EventCorrelator does; ``kubectl describe`` shows ``x42 over 3m``).

One task writes them in order, so the aggregate's count is exact; callers only enqueue, so
neither the reconcile nor a report-API request waits on the API server. Events are best
effort: a full queue or a refused write is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubetune.reconcile import COMBINED_PREFIX, FoldEvent, PostEvent
from kubetune.spec import GROUP, VERSION

__all__ = ["COMPONENT", "MAX_MESSAGE_CHARS", "EventPoster", "study_reference"]

logger = logging.getLogger("kubetune.operator")

#: ``source.component`` and ``reportingComponent`` of the Events posted here.
COMPONENT = "kubetune"
#: Longest message posted (the API server allows 1 KiB in ``note``; kopf cuts there too).
MAX_MESSAGE_CHARS = 1000
MAX_QUEUED = 10000


def study_reference(namespace: str, name: str, uid: str = "") -> dict[str, str]:
    """The ``involvedObject`` of a TuningStudy's Events."""
    ref = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningStudy",
        "namespace": namespace,
        "name": name,
    }
    if uid:
        ref["uid"] = uid
    return ref


class EventPoster:
    """Queues per-trial Events (posted or folded, as the study's budget said) and writes them
    in order from one task.

    ``core`` is a ``kubernetes.client.CoreV1Api`` (its calls block; they run in a thread).
    """

    def __init__(
        self, core: Any, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        import kubernetes

        self._core = core
        self._exc = kubernetes.client.exceptions.ApiException
        self._clock = clock
        self._queue: asyncio.Queue[tuple[dict[str, str], PostEvent | FoldEvent]] = asyncio.Queue(
            MAX_QUEUED
        )
        #: (namespace, aggregate Event name) -> its count as last written.
        self._counts: dict[tuple[str, str], int] = {}
        self._task: asyncio.Task[None] | None = None

    def post(self, ref: Mapping[str, str], decision: PostEvent | FoldEvent) -> None:
        """Queue one Event for the object ``ref`` (never blocks, never raises)."""
        try:
            self._queue.put_nowait((dict(ref), decision))
        except asyncio.QueueFull:
            logger.warning(
                "Dropped Event study=%s/%s reason=%s: %d Events are waiting",
                ref.get("namespace"),
                ref.get("name"),
                decision.event.reason,
                MAX_QUEUED,
            )

    def forget(self, namespace: str, study: str) -> None:
        """The study was deleted: drop the counts of its aggregate Events."""
        for key in [k for k in self._counts if k[0] == namespace and k[1].startswith(f"{study}.")]:
            del self._counts[key]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until every queued Event was written."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def stop(self, timeout: float = 2.0) -> None:
        await self.drain(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            ref, decision = await self._queue.get()
            try:
                await asyncio.to_thread(self.write, ref, decision)
            except Exception as e:  # best effort: an Event must not stop the next one
                status = getattr(e, "status", None)
                logger.warning(
                    "Could not post Event study=%s/%s reason=%s error=%s%s",
                    ref.get("namespace"),
                    ref.get("name"),
                    decision.event.reason,
                    type(e).__name__,
                    f" ({status})" if status else "",
                )
            finally:
                self._queue.task_done()

    def write(self, ref: Mapping[str, str], decision: PostEvent | FoldEvent) -> None:
        """Post or fold one Event now (blocking)."""
        ns = ref["namespace"]
        body = self._body(ref, decision)
        if not isinstance(decision, FoldEvent):
            body["metadata"]["generateName"] = f"{ref['name']}."
            self._core.create_namespaced_event(ns, body, _preload_content=False)
            return
        body["metadata"]["name"] = decision.name
        body["message"] = (COMBINED_PREFIX + decision.event.message)[:MAX_MESSAGE_CHARS]
        self._counts[(ns, decision.name)] = self._fold(ns, decision.name, body)

    def _body(self, ref: Mapping[str, str], decision: PostEvent | FoldEvent) -> dict[str, Any]:
        event = decision.event
        now = self._clock().isoformat()
        return {
            "metadata": {"namespace": ref["namespace"]},
            "involvedObject": dict(ref),
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:MAX_MESSAGE_CHARS],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    def _fold(self, ns: str, name: str, body: dict[str, Any]) -> int:
        """Raise the aggregate's count by one; returns the new count.

        Its count is known once written; after a restart, or when it expired (the API
        server's event TTL), the create tells: 409 means read its count and go on from there.
        """
        known = self._counts.get((ns, name))
        if known is not None:
            try:
                return self._bump(ns, name, body, known)
            except self._exc as e:
                if e.status != 404:
                    raise
        try:
            self._core.create_namespaced_event(ns, body, _preload_content=False)
            return 1
        except self._exc as e:
            if e.status != 409:
                raise
        raw = self._core.read_namespaced_event(name, ns, _preload_content=False)
        current = json.loads(raw.data).get("count") or 1
        return self._bump(ns, name, body, int(current))

    def _bump(self, ns: str, name: str, body: Mapping[str, Any], count: int) -> int:
        patch = {
            "count": count + 1,
            "lastTimestamp": body["lastTimestamp"],
            "message": body["message"],
            "type": body["type"],
        }
        self._core.patch_namespaced_event(name, ns, patch, _preload_content=False)
        return count + 1
