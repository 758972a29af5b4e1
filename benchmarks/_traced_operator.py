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
from kubetune import handlers

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

_original_wake = handlers.Runtime.wake


def _wake(self: handlers.Runtime, namespace: str | None, label: str | None) -> None:
    _emit("wake", f"{namespace}/{label}", time.monotonic(), 0.0)
    _original_wake(self, namespace, label)


handlers.Runtime.wake = _wake  # type: ignore[method-assign]


# ---- the executor: queue wait vs the call ----------------------------------------------------

_original_db = handlers.Runtime.db


async def _db(self: handlers.Runtime, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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


handlers.Runtime.db = _db  # type: ignore[method-assign]


# ---- Kubernetes calls ------------------------------------------------------------------------


def _timed_api(name: str) -> None:
    original = getattr(handlers.KubeApi, name)

    @functools.wraps(original)
    def wrapper(self: Any, namespace: str, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return original(self, namespace, *args, **kwargs)
        finally:
            _emit(f"api.{name}", namespace, start, time.monotonic() - start)

    setattr(handlers.KubeApi, name, wrapper)


for _name in ("create_job", "patch_status", "delete_job"):
    _timed_api(_name)


# ---- the pass and the pure decision ------------------------------------------------------------

_original_reconcile = handlers.reconcile_study
_original_decide = handlers.decide


async def _reconcile_study(
    rt: handlers.Runtime, body: Any, jobs_index: Any, pods_index: Any
) -> float:
    start = time.monotonic()
    study = f"{body.metadata.namespace}/{handlers.study_label(str(body.metadata.name))}"
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


handlers.reconcile_study = _reconcile_study  # type: ignore[assignment]
handlers.decide = _decide  # type: ignore[assignment]
