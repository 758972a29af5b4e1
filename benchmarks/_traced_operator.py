"""The operator with timing wrappers: where a reconcile pass spends its wall-clock time.

Measurement only, for ``python -m benchmarks.launch_latency --trace``: ``kopf run -m
benchmarks._traced_operator`` imports ``kubetune.handlers`` (which registers every handler as
usual) and wraps, in this process only, the calls on a pass's critical path. Nothing in
``kubetune`` changes. Each call appends one JSON line to ``$KUBETUNE_BENCH_TRACE``:

- ``wake``: an event (Job, Pod, study) woke a study's loop;
- ``pass``: one ``reconcile_study`` call, start and duration;
- ``db.<method>``: a ledger call through the executor, split into the wait for a free
  executor thread (``queued``) and the call itself;
- ``api.<method>``: a Kubernetes call (``create_job``, ``patch_status``) in a thread;
- ``decide``: the pure reconcile.

Times are ``time.monotonic()`` seconds (the operator's own clock); ``study`` is
``namespace/label``.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

# Importing the module registers every kopf handler, as ``-m kubetune.handlers`` would.
from kubetune import (
    handlers,  # noqa: F401
    kube_client,
    runtime,
    study_loop,
)
from kubetune.jobs import study_label

_PATH = os.environ.get("KUBETUNE_BENCH_TRACE", "operator-trace.jsonl")
_lock = threading.Lock()
_out = open(_PATH, "a", buffering=1)  # noqa: SIM115 - open for the life of the process


def _emit(kind: str, study: str, start: float, seconds: float, **extra: Any) -> None:
    line = json.dumps({"k": kind, "s": study, "t": start, "d": seconds, **extra})
    with _lock:
        _out.write(line + "\n")


def _study_of(study: Any) -> str:
    name = getattr(study, "study_name", "")
    return str(name)


# ---- wake-ups --------------------------------------------------------------------------------

_original_wake = runtime.Runtime.wake


def _wake(self: runtime.Runtime, namespace: str | None, label: str | None) -> None:
    _emit("wake", f"{namespace}/{label}", time.monotonic(), 0.0)
    _original_wake(self, namespace, label)


runtime.Runtime.wake = _wake  # type: ignore[method-assign]


# ---- the executor: queue wait vs the call ----------------------------------------------------

_original_db = runtime.Runtime.db


async def _db(self: runtime.Runtime, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    submitted = time.monotonic()
    timing: dict[str, float] = {}

    def call() -> Any:
        timing["start"] = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            timing["end"] = time.monotonic()

    try:
        return await _original_db(self, call)
    finally:
        start = timing.get("start", submitted)
        end = timing.get("end", time.monotonic())
        name = getattr(fn, "__name__", str(fn))
        study = _study_of(args[0]) if args else ""
        _emit(f"db.{name}", study, submitted, end - submitted, queued=start - submitted)


runtime.Runtime.db = _db  # type: ignore[method-assign]


# ---- Kubernetes calls ------------------------------------------------------------------------


def _timed_api(name: str) -> None:
    original = getattr(kube_client.KubeApi, name)

    @functools.wraps(original)
    def wrapper(self: Any, namespace: str, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return original(self, namespace, *args, **kwargs)
        finally:
            _emit(f"api.{name}", namespace, start, time.monotonic() - start)

    setattr(kube_client.KubeApi, name, wrapper)


for _name in ("create_job", "patch_status", "delete_job"):
    _timed_api(_name)


# ---- the pass and the pure decision ------------------------------------------------------------

_original_reconcile = study_loop.reconcile_study
_original_decide = study_loop.decide


async def _reconcile_study(
    rt: runtime.Runtime, body: Any, jobs_index: Any, pods_index: Any
) -> float:
    start = time.monotonic()
    study = f"{body.metadata.namespace}/{study_label(str(body.metadata.name))}"
    try:
        return await _original_reconcile(rt, body, jobs_index, pods_index)
    finally:
        _emit("pass", study, start, time.monotonic() - start)


def _decide(spec: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.monotonic()
    try:
        decision = _original_decide(spec, *args, **kwargs)
    finally:
        seconds = time.monotonic() - start
    kinds: dict[str, int] = {}
    for action in decision.actions:
        kinds[type(action).__name__] = kinds.get(type(action).__name__, 0) + 1
    launches = sum(getattr(a, "count", 0) for a in decision.actions)
    _emit("decide", "", start, seconds, actions=kinds, launches=launches)
    return decision


study_loop.reconcile_study = _reconcile_study  # type: ignore[assignment]
study_loop.decide = _decide  # type: ignore[assignment]
