"""What each report-API route does to a trial in the Optuna ledger (blocking calls).

The HTTP side (:mod:`kubetune.reporting`) authenticates, parses and answers; the rules here
decide: a report of a step replaces its value and asks the pruner about the curve up to that
step; complete, fail and prune finish a RUNNING trial once and answer a repeat as the first
time; a report or heartbeat is a sign of life, written at most every
``HEARTBEAT_WRITE_SECONDS``. Every refusal is a :class:`Reply` with its status.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from kubetune.ledger import (
    ATTEMPT_ATTR,
    FAIL_REASON_ATTR,
    HEARTBEAT_ATTR,
    find_trial,
    read_trial,
    write_intermediate,
    write_user_attr,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "HEARTBEAT_WRITE_SECONDS",
    "MAX_REASON_CHARS",
    "MAX_STEP",
    "Outcome",
    "Reply",
    "TrialHandle",
    "decode_body",
    "error",
    "parse_complete",
    "parse_fail",
    "parse_report",
    "report",
    "run_action",
]

#: A report or heartbeat rewrites ``kubetune:heartbeat`` only when the stored one is at least
#: this old: one write per trial per few seconds, however often a trainer reports
#: (``trial.heartbeatTimeoutSeconds`` is at least 15).
HEARTBEAT_WRITE_SECONDS = 5.0
#: Largest step Optuna's RDB schema can store (an SQL INTEGER).
MAX_STEP = 2**31 - 1
#: Longest failure reason stored; longer ones are cut (a traceback tail is still useful).
MAX_REASON_CHARS = 1024


class Reply(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Ends request handling with a status and a JSON body."""

    def __init__(self, status: int, body: Mapping[str, Any], **headers: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = dict(body)
        self.headers = headers


def error(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": message}, **headers)


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Body validation (pure)


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(422, f"{where} must be a number, got {type(value).__name__}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise error(422, f"{where} must be finite, got {value!r}")
    return as_float


def parse_report(payload: dict[str, Any]) -> tuple[int, float]:
    if "step" not in payload:
        raise error(422, "step is required")
    if "value" not in payload:
        raise error(422, "value is required")
    step = payload["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise error(422, f"step must be an integer, got {type(step).__name__}")
    if not 0 <= step <= MAX_STEP:
        raise error(422, f"step must be in [0, {MAX_STEP}], got {step}")
    return step, _finite(payload["value"], "value")


def parse_complete(payload: dict[str, Any]) -> list[float]:
    if "values" not in payload:
        raise error(422, "values is required")
    values = payload["values"]
    if not isinstance(values, list) or not values:
        raise error(422, "values must be a non-empty list of numbers")
    return [_finite(v, f"values[{i}]") for i, v in enumerate(values)]


def parse_fail(payload: dict[str, Any]) -> str:
    reason = payload.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise error(422, "reason must be a non-empty string")
    return reason[:MAX_REASON_CHARS]


def decode_body(raw: bytes, *, empty_ok: bool) -> dict[str, Any]:
    if not raw.strip() and empty_ok:
        return {}
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(400, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise error(400, f"malformed JSON: {exc.msg} at {where}") from None
    except RecursionError:
        raise error(400, "malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise error(422, f"body must be a JSON object, got {type(payload).__name__}")
    return payload


# ---------------------------------------------------------------------------------------------
# Ledger operations (blocking; run in the executor)


class TrialHandle:
    """One request's view of one trial: lookup, attempt check, and the idempotent writes."""

    def __init__(self, study: optuna.Study, number: int, attempt: int) -> None:
        self.study = study
        self.number = number
        try:
            self.trial_id, self.frozen = find_trial(study, number)
        except KeyError:
            raise error(404, f"trial {number} not found") from None
        current = self.frozen.user_attrs.get(ATTEMPT_ATTR, 0)
        if current != attempt:
            # A superseded attempt (e.g. an evicted pod that came back) must not write.
            raise error(403, "token belongs to a superseded attempt of this trial")

    def refresh(self) -> None:
        self.frozen = read_trial(self.study, self.trial_id)

    def require_running(self) -> None:
        if self.frozen.state != TrialState.RUNNING:
            raise error(409, f"trial is already {self.frozen.state.name}")

    def tell(self, state: TrialState, values: list[float] | None = None) -> bool:
        """Finish the trial; False when a concurrent request finished it first."""
        try:
            self.study.tell(self.number, values, state=state)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            self.refresh()
            if self.frozen.state == TrialState.RUNNING:
                raise
            return False
        self.refresh()
        return True


@contextlib.contextmanager
def _finished_meanwhile(handle: TrialHandle) -> Iterator[None]:
    """The state check and the write are two transactions: a trial finished in between (by
    its own complete, or the operator failing it) answers 409 like any finished trial."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        handle.refresh()
        handle.require_running()
        raise


def _touch(handle: TrialHandle, now: float) -> None:
    """Store the trainer's sign of life, at most every ``HEARTBEAT_WRITE_SECONDS``."""
    last = handle.frozen.user_attrs.get(HEARTBEAT_ATTR)
    if (
        isinstance(last, int | float)
        and not isinstance(last, bool)
        and 0.0 <= now - last < HEARTBEAT_WRITE_SECONDS
    ):
        return
    with _finished_meanwhile(handle):
        write_user_attr(handle.study, handle.trial_id, HEARTBEAT_ATTR, now)


def _curve_until(frozen: FrozenTrial, step: int, value: float) -> FrozenTrial:
    """The trial as the pruner judges it after a report of ``step``: its curve up to that step.

    Steps beyond it can only be left over from an earlier attempt (or be reported out of
    order); judging them would prune a retried attempt on its predecessor's curve.
    """
    view = copy.copy(frozen)
    curve = {s: v for s, v in frozen.intermediate_values.items() if s < step}
    curve[step] = value
    view.intermediate_values = curve
    return view


def report(handle: TrialHandle, step: int, value: float, now: float) -> Outcome:
    """Store the value of ``step`` (the latest report of a step wins) and ask the pruner.

    A retried attempt, or a suspended Job's new pod, runs the trainer again from its start
    and reports the same steps with values that may differ (nondeterministic kernels, another
    data order): its values replace the earlier ones, never a 409 that would fail the trial.
    """
    handle.require_running()
    study = handle.study
    if handle.frozen.intermediate_values.get(step) != value:
        with _finished_meanwhile(handle):
            write_intermediate(study, handle.trial_id, step, value)
    _touch(handle, now)
    if len(study.directions) > 1:
        # Optuna has no pruning for multi-objective studies; keep the curve, never prune.
        return Outcome(200, {"prune": False})
    prune = bool(study.pruner.prune(study, _curve_until(handle.frozen, step, value)))
    events = [("prune_advised", {"step": step})] if prune else []
    return Outcome(200, {"prune": prune}, events)


def _finish(
    handle: TrialHandle,
    state: TrialState,
    values: list[float] | None,
    same: Callable[[FrozenTrial], bool],
    what: str,
) -> Outcome:
    """Tell ``state`` while RUNNING; a trial already in ``state`` with ``same`` data is a retry."""
    if handle.frozen.state == TrialState.RUNNING and handle.tell(state, values):
        final = handle.frozen.state.name
        return Outcome(200, {"state": final}, [("trial_finished", {"state": final})])
    if handle.frozen.state == state:
        if same(handle.frozen):
            return Outcome(200, {"state": state.name})
        raise error(409, f"trial is already {state.name} with a different {what}")
    raise error(409, f"trial is already {handle.frozen.state.name}")


def complete(handle: TrialHandle, values: list[float]) -> Outcome:
    n_objectives = len(handle.study.directions)
    if len(values) != n_objectives:
        raise error(
            422, f"values has {len(values)} entries; the study has {n_objectives} objectives"
        )
    return _finish(handle, TrialState.COMPLETE, values, lambda t: t.values == values, "values")


def fail(handle: TrialHandle, reason: str) -> Outcome:
    if handle.frozen.state == TrialState.RUNNING:
        try:
            write_user_attr(handle.study, handle.trial_id, FAIL_REASON_ATTR, reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            handle.refresh()  # finished meanwhile: fall through to the retry comparison
    return _finish(
        handle,
        TrialState.FAIL,
        None,
        lambda t: t.user_attrs.get(FAIL_REASON_ATTR) == reason,
        "reason",
    )


def prune(handle: TrialHandle) -> Outcome:
    return _finish(handle, TrialState.PRUNED, None, lambda _: True, "result")


def heartbeat(handle: TrialHandle, now: float) -> Outcome:
    handle.require_running()
    _touch(handle, now)
    return Outcome(200, {"ok": True})


def run_action(study: optuna.Study, number: int, attempt: int, action: str, args: Any) -> Outcome:
    """Carry out one route's action on the trial (blocking: run it in an executor)."""
    handle = TrialHandle(study, number, attempt)
    if action == "report":
        step, value, now = args
        return report(handle, step, value, now)
    if action == "complete":
        return complete(handle, args)
    if action == "fail":
        return fail(handle, args)
    if action == "prune":
        return prune(handle)
    return heartbeat(handle, args)
