"""What one operator process holds in memory: shared services, and one state per study.

Everything durable is in the Optuna ledger and in the Jobs; this is caches and wake-ups. The
per-study part lives in one :class:`StudyState` with one lifetime: made when the study is first
seen, dropped by :meth:`Runtime.release` when it goes, so nothing is cleaned up field by field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from kubetune.config import OperatorConfig
from kubetune.event_posting import EventPoster, study_reference
from kubetune.jobs import study_label
from kubetune.kube_client import KubeApi
from kubetune.ledger import Ledger
from kubetune.metrics import OperatorMetrics
from kubetune.observed_job import ObservedJob
from kubetune.reconcile import EventBudget, EventSpec
from kubetune.tokens import TokenSigner
from kubetune.wakeups import WakeFilter

__all__ = ["Runtime", "StudyKey", "StudyState"]

T = TypeVar("T")

#: The operator process's collector thresholds (CPython's: 700, 10, 10). See
#: :func:`tune_collector`.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    A study of 10,000 trials keeps ~430,000 objects tracked (index entries, trial records,
    Optuna's trials); with CPython's thresholds the full collections a pass's allocations
    triggered took a third to a half of the operator's CPU per trial (benchmarks/README.md,
    7.). Frozen objects (~116,000 after the imports) are never scanned again; most garbage
    here is freed by reference counting, not by the collector.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: (namespace, the study's ``kubetune.io/study`` label value): what Job and Pod events carry.
StudyKey = tuple[str, str]


#: A Job's and its pods' index entries, the :class:`ObservedJob` made of them, its trial label.
ObservedMemo = tuple[
    Mapping[str, Any], tuple[Mapping[str, Any], ...], ObservedJob | None, int | None
]
#: A pod's index entry and its ``job-name`` and trial labels.
PodLabels = tuple[Mapping[str, Any], str | None, int | None]


@dataclasses.dataclass
class StudyState:
    """One study's memory; all of it can be lost (a restart rebuilds from the ledger and Jobs)."""

    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: kopf told us about the study and it is not deleted (the report API then says "retry").
    known: bool = False
    #: Job name -> (trial, attempt, monotonic time created): created, not yet seen in the index.
    expected: dict[str, tuple[int, int, float]] = dataclasses.field(default_factory=dict)
    #: (trial, attempt) whose Job a direct read answered 404 for: the next pass passes them to
    #: the decision as ``gone`` (and drops them), which may then relaunch the trial.
    gone: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    #: Job name -> monotonic time kopf last delivered an event for that Job.
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Seconds of the current storage backoff (0 while the storage answers).
    storage_backoff: float = 0.0
    #: The last InvalidSpec message posted as an Event. The body's status can lag our own
    #: patch by one watch event, so it alone would post the Event twice.
    invalid_posted: str | None = None
    #: The study object's uid (its Events point at it; "" until the first reconcile).
    uid: str = ""
    #: How many per-trial Events of each reason were posted one by one (the rest fold).
    event_budget: EventBudget = dataclasses.field(default_factory=EventBudget)
    #: Which Job and Pod events change what the decision reads (the others wake no pass).
    wakeups: WakeFilter = dataclasses.field(default_factory=WakeFilter)
    #: Job name -> (its index entry, its pods' entries, what they were observed as); kopf
    #: replaces an entry when the object changes, so the same entries observe the same.
    observed: dict[str, ObservedMemo] = dataclasses.field(default_factory=dict)
    #: id of a pod's index entry -> its labels, as of last pass (the entries kept alive).
    pods_seen: dict[int, PodLabels] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Runtime:
    """Per-process services (ledger, executor, metrics, servers) and the studies' states."""

    config: OperatorConfig
    ledger: Ledger
    signer: TokenSigner
    metrics: OperatorMetrics
    registry: CollectorRegistry
    api: KubeApi
    executor: concurrent.futures.ThreadPoolExecutor
    #: Writes per-trial Events (see :meth:`announce`).
    events: EventPoster
    report_url: str | None = None
    studies: dict[StudyKey, StudyState] = dataclasses.field(default_factory=dict)
    runners: list[web.AppRunner] = dataclasses.field(default_factory=list)
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    #: When the report API began serving (heartbeat silence counts from then at the earliest).
    reports_since: datetime | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    #: Set when the operator stops: a pass cut short by the executor's shutdown is not an error.
    closing: bool = False

    def study(self, namespace: str, name: str) -> StudyState:
        """The study's state, made on first use."""
        return self.studies.setdefault((namespace, study_label(name)), StudyState())

    def peek(self, namespace: str | None, label: str | None) -> StudyState | None:
        """The state of a study by its label, without making one (Job and Pod events)."""
        if not namespace or not label:
            return None
        return self.studies.get((namespace, label))

    def wake(self, namespace: str | None, label: str | None) -> None:
        state = self.peek(namespace, label)
        if state is not None:
            state.wake.set()

    def release(self, namespace: str, name: str) -> None:
        """Forget the study (it was deleted): its state goes in one piece."""
        self.studies.pop((namespace, study_label(name)), None)
        self.events.forget(namespace, name)

    def announce(self, namespace: str, name: str, event: EventSpec) -> None:
        """Post a per-trial Event through the study's budget (posted, or folded when the
        study already has its share of that reason). Never blocks."""
        state = self.study(namespace, name)
        decision = state.event_budget.admit(event, study=name, uid=state.uid)
        self.events.post(study_reference(namespace, name, state.uid), decision)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking ledger call on the executor sized to the connection pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
