"""Trainer-side SDK: read this trial's parameters, report progress, hand back the result.

Standard library only, so any trainer image can vendor or install it without torch, Optuna or
the operator's dependencies. The transport is chosen from the environment the operator or the
local runner sets (docs/architecture.md):

- ``KUBETUNE_REPORT_URL`` and ``KUBETUNE_TRIAL_TOKEN`` set (Reporter mode): every call posts to
  the report API. Posts are retried with backoff on connection errors, timeouts, 429 and 5xx,
  which is safe because the API is idempotent; a short operator restart does not fail a trial.
  ``report`` and ``heartbeat`` are best effort (after the last retry they warn on stderr and
  training goes on); ``complete``, ``fail`` and ``pruned`` raise :class:`ReportError`. Any 4xx
  answer raises :class:`ReportError` at once: it means this trial may no longer write (e.g.
  its attempt was superseded), and retrying would not help.
- otherwise (TerminationMessage mode, or a plain run outside kubetune): ``report`` returns
  False, and ``complete`` writes ``{"values": [...]}`` to ``KUBETUNE_TERMINATION_LOG``
  (default ``/dev/termination-log`` when it exists and is writable, else a JSON line on
  stdout). To fail in this mode, exit non-zero.

Typical use::

    from kubetune import trial

    lr = trial.param("lr", default=0.01)
    for epoch in range(epochs):
        accuracy = train_one_epoch(lr)
        if trial.report(accuracy, step=epoch):
            trial.pruned()
            sys.exit(0)
    trial.complete(accuracy)
"""

from __future__ import annotations

import http.client
import json
import math
import operator
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, SupportsFloat

from kubetune._env import param_env_name

__all__ = [
    "ReportError",
    "TrialContext",
    "complete",
    "fail",
    "heartbeat",
    "is_tuning",
    "param",
    "param_env_name",
    "params",
    "pruned",
    "report",
    "should_prune",
]

ENV_PARAMS = "KUBETUNE_PARAMS"
ENV_NAMESPACE = "KUBETUNE_NAMESPACE"
ENV_STUDY = "KUBETUNE_STUDY"
ENV_TRIAL_NUMBER = "KUBETUNE_TRIAL_NUMBER"
ENV_REPORT_URL = "KUBETUNE_REPORT_URL"
ENV_TRIAL_TOKEN = "KUBETUNE_TRIAL_TOKEN"
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
#: Server answers worth retrying: overload, restarts, a storage outage.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The longest failure reason sent; the server keeps at most this much too.
MAX_REASON_CHARS = 1024

_MISSING: Any = object()


class ReportError(RuntimeError):
    """The report API refused a call (``status`` set) or could not be reached (None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _finite(value: SupportsFloat, what: str) -> float:
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(as_float):
        raise ValueError(f"{what} must be finite, got {as_float}")
    return as_float


class TrialContext:
    """The SDK bound to one environment; the module functions use one built from os.environ.

    Args:
        env: the environment to read (default: a snapshot of ``os.environ``).
        timeout: seconds per HTTP request.
        max_attempts: HTTP tries per call, the first included.
        backoff: first retry delay in seconds, doubled per retry up to ``max_backoff``; a
            ``Retry-After`` header from the server takes its place (capped the same way).
        sleep, opener, stdout, stderr: injected for tests.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
        max_attempts: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        opener: urllib.request.OpenerDirector | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._env = dict(os.environ if env is None else env)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        # No proxies: the report API is in-cluster or on localhost, and a pod's HTTP_PROXY
        # must not carry the trial token elsewhere.
        self._opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._stdout = stdout
        self._stderr = stderr
        self._should_prune = False
        self._params: dict[str, Any] | None = None

    # -- parameters --------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """All parameters of this trial (``KUBETUNE_PARAMS``); empty outside kubetune."""
        if self._params is None:
            raw = self._env.get(ENV_PARAMS, "").strip()
            if not raw:
                self._params = {}
            else:
                try:
                    parsed = json.loads(raw)
                except ValueError as exc:
                    raise ValueError(f"{ENV_PARAMS} is not valid JSON: {exc}") from None
                if not isinstance(parsed, dict):
                    raise ValueError(
                        f"{ENV_PARAMS} must be a JSON object, got {type(parsed).__name__}"
                    )
                self._params = parsed
        return dict(self._params)

    def param(self, name: str, default: Any = _MISSING) -> Any:
        """One parameter: from ``KUBETUNE_PARAMS``, else ``KUBETUNE_PARAM_<NAME>``, else default.

        A parameter a conditional ``when`` left out is absent, so pass a default for those.
        """
        values = self.params()
        if name in values:
            return values[name]
        raw = self._env.get(param_env_name(name))
        if raw is not None:
            try:
                return json.loads(raw)
            except ValueError:
                return raw  # a bare string such as sgd
        if default is not _MISSING:
            return default
        known = ", ".join(sorted(values)) or "none"
        raise KeyError(f"parameter {name!r} is not set (parameters given: {known})")

    def is_tuning(self) -> bool:
        """True when kubetune (operator or local runner) launched this process."""
        return any(self._env.get(k) for k in (ENV_STUDY, ENV_PARAMS, ENV_REPORT_URL))

    # -- results -----------------------------------------------------------------------------

    def report(self, value: SupportsFloat, step: int) -> bool:
        """Record an intermediate value; True means the pruner says stop now.

        After True, stop training and call :meth:`pruned`.
        """
        value = _finite(value, "value")
        if isinstance(step, bool):
            raise TypeError("step must be an int, got bool")
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"step must be an int, got {type(step).__name__}") from None
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not self._http_mode():
            return False
        try:
            answer = self._post("report", {"step": step, "value": value})
        except ReportError as exc:
            if exc.status is not None:
                raise
            self._warn(f"intermediate value for step {step} was not recorded: {exc}")
            return False
        self._should_prune = answer.get("prune") is True
        return self._should_prune

    def should_prune(self) -> bool:
        """The pruner's answer to the last :meth:`report` (False before any)."""
        return self._should_prune

    def complete(self, values: SupportsFloat | Sequence[SupportsFloat]) -> None:
        """Hand back the final objective value(s), one per objective in spec order."""
        if isinstance(values, str | bytes):
            raise TypeError("values must be a number or a sequence of numbers")
        if isinstance(values, Sequence):
            finals = [_finite(v, f"values[{i}]") for i, v in enumerate(values)]
        else:
            finals = [_finite(values, "value")]
        if not finals:
            raise ValueError("values must not be empty")
        if self._http_mode():
            self._post("complete", {"values": finals})
        else:
            self._write_termination_message({"values": finals})

    def fail(self, reason: str) -> None:
        """Mark the trial failed (a user error: it is not retried). Exit afterwards."""
        reason = str(reason).strip() or "failed"
        if len(reason) > MAX_REASON_CHARS:
            reason = "..." + reason[-(MAX_REASON_CHARS - 3) :]  # keep a traceback's tail
        if self._http_mode():
            self._post("fail", {"reason": reason})
        else:
            print(f"kubetune: trial failed: {reason}", file=self._stderr or sys.stderr)

    def pruned(self) -> None:
        """Tell the ledger the trial stopped because :meth:`report` said to prune."""
        if self._http_mode():
            self._post("prune", {})

    def heartbeat(self) -> None:
        """Say the trial is alive during long steps between reports (best effort).

        Reports count as heartbeats too. With ``trial.heartbeatTimeoutSeconds`` set, a trainer
        that sends neither for that long is failed (``HeartbeatTimeout``) and stopped; call
        this from the training loop (every few batches is fine: the server stores at most one
        heartbeat per trial per 5 s) rather than from a background thread, which would keep a
        hung trainer looking alive.
        """
        if not self._http_mode():
            return
        try:
            self._post("heartbeat", {})
        except ReportError as exc:
            if exc.status is not None:
                raise
            self._warn(f"heartbeat was not delivered: {exc}")

    # -- transport ---------------------------------------------------------------------------

    def _http_mode(self) -> bool:
        url = self._env.get(ENV_REPORT_URL, "").strip()
        token = self._env.get(ENV_TRIAL_TOKEN, "").strip()
        if bool(url) != bool(token):
            missing = ENV_TRIAL_TOKEN if url else ENV_REPORT_URL
            raise ValueError(f"{missing} is not set, but Reporter mode needs both URL and token")
        return bool(url)

    def _url(self, action: str) -> str:
        missing = [k for k in (ENV_NAMESPACE, ENV_STUDY, ENV_TRIAL_NUMBER) if not self._env.get(k)]
        if missing:
            raise ValueError(f"Reporter mode needs {', '.join(missing)} in the environment")
        base = self._env[ENV_REPORT_URL].strip().rstrip("/")
        ns = urllib.parse.quote(self._env[ENV_NAMESPACE], safe="")
        study = urllib.parse.quote(self._env[ENV_STUDY], safe="")
        number = urllib.parse.quote(self._env[ENV_TRIAL_NUMBER].strip(), safe="")
        return f"{base}/v1/namespaces/{ns}/studies/{study}/trials/{number}/{action}"

    def _post(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self._url(action),
            data=json.dumps(body, allow_nan=False).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._env[ENV_TRIAL_TOKEN].strip()}",
            },
            method="POST",
        )
        delay = self._backoff
        for attempt in range(1, self._max_attempts + 1):
            wait = delay
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    return _json_object(response.read(), action)
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code not in RETRY_STATUSES:
                    raise ReportError(
                        f"{action} refused ({exc.code}): {message}", exc.code
                    ) from None
                problem = f"{exc.code}: {message}"
                wait = _retry_after(exc.headers.get("Retry-After"), default=delay)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                problem = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if attempt == self._max_attempts:
                raise ReportError(f"{action} failed after {attempt} attempts: {problem}")
            self._sleep(min(wait, self._max_backoff))
            delay = min(delay * 2, self._max_backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_termination_message(self, message: Mapping[str, Any]) -> None:
        text = json.dumps(message, allow_nan=False)
        path = self._env.get(ENV_TERMINATION_LOG, "").strip()
        if not path and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
            path = DEFAULT_TERMINATION_LOG
        if not path:
            print(text, file=self._stdout or sys.stdout, flush=True)
            return
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise ReportError(f"could not write the result to {path}: {exc.strerror}") from None

    def _warn(self, message: str) -> None:
        print(f"kubetune: warning: {message}", file=self._stderr or sys.stderr, flush=True)


def _json_object(raw: bytes, action: str) -> dict[str, Any]:
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        raise ReportError(f"{action}: the report API answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise ReportError(f"{action}: the report API answered a JSON {type(answer).__name__}")
    return answer


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        answer = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return str(exc.reason)
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    return str(exc.reason)


def _retry_after(header: str | None, *, default: float) -> float:
    try:
        seconds = float(header) if header is not None else default
    except ValueError:
        return default  # an HTTP date: not worth parsing here
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


_default: TrialContext | None = None
_default_lock = threading.Lock()


def _context() -> TrialContext:
    global _default
    with _default_lock:
        if _default is None:
            _default = TrialContext()
        return _default


def params() -> dict[str, Any]:
    """All parameters of this trial; empty outside kubetune."""
    return _context().params()


def param(name: str, default: Any = _MISSING) -> Any:
    """One parameter, or ``default`` when absent (KeyError when absent without default)."""
    return _context().param(name, default)


def is_tuning() -> bool:
    """True when kubetune launched this process."""
    return _context().is_tuning()


def report(value: SupportsFloat, step: int) -> bool:
    """Record an intermediate value; True means stop now and call :func:`pruned`."""
    return _context().report(value, step)


def should_prune() -> bool:
    """The pruner's answer to the last :func:`report`."""
    return _context().should_prune()


def complete(values: SupportsFloat | Sequence[SupportsFloat]) -> None:
    """Hand back the final objective value(s)."""
    _context().complete(values)


def fail(reason: str) -> None:
    """Mark the trial failed with a reason (not retried)."""
    _context().fail(reason)


def pruned() -> None:
    """Confirm the trial stopped because it was told to prune."""
    _context().pruned()


def heartbeat() -> None:
    """Say the trial is alive (best effort)."""
    _context().heartbeat()
