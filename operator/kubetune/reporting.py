"""The report API: trainers write intermediate values and results to their own Optuna trial.

Served by the operator (port 8082) and by the local runner on 127.0.0.1; the routes and the
token format are in docs/architecture.md. This module knows Optuna and HTTP, not Kubernetes:
``resolver(namespace, study)`` maps the TuningStudy to its Optuna study (built with the
study's pruner, because pruning decisions come from ``study.pruner``).

Rules a caller can rely on:

- The token is checked first, from the path alone, before the body is read or the database
  is touched; then its attempt must equal the trial's ``kubetune:attempt`` user attr
  (missing = 0), and the trial must be RUNNING.
- Every route is idempotent, so the SDK may retry a post whose answer it lost: an identical
  report, an identical completion, the same failure reason, or a second prune answers as the
  first did and changes nothing. A conflicting completion, failure or prune is 409; a report
  of a step already reported replaces its value (a retried or resumed attempt trains again
  from the start), and the pruner judges the curve up to the reported step.
- Optuna calls block, so they run in an executor and never stall the event loop.
- Storage errors answer 503 with ``Retry-After``; nothing here lets an exception escape.
- Reports and heartbeats are signs of life, stored as the user attr ``kubetune:heartbeat``
  (unix seconds, float; rewritten at most every ``HEARTBEAT_WRITE_SECONDS``) rather than
  through Optuna's heartbeat, which does not work with ask-and-tell; the operator decides
  what is stale (``trial.heartbeatTimeoutSeconds``).
- Metrics stay out: ``on_event(kind, namespace, study, number, **fields)`` is called on the
  event loop with kinds ``"request"`` (``action``, ``code``), ``"prune_advised"`` (``step``)
  and ``"trial_finished"`` (``state``: ``"COMPLETE"|"FAIL"|"PRUNED"``, only for the request
  that made the transition).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from aiohttp import web

# The ledger owns the trial user attrs' names (kubetune:attempt, kubetune:fail_reason).
from kubetune.ledger import ATTEMPT_ATTR, FAIL_REASON_ATTR, HEARTBEAT_ATTR, STORAGE_ERRORS
from kubetune.report_rules import (
    HEARTBEAT_WRITE_SECONDS,
    MAX_REASON_CHARS,
    MAX_STEP,
    Outcome,
    Reply,
    decode_body,
    error,
    parse_complete,
    parse_fail,
    parse_report,
    run_action,
)

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from kubetune.tokens import TokenSigner

__all__ = [
    "ACTIONS",
    "ATTEMPT_ATTR",
    "FAIL_REASON_ATTR",
    "HEARTBEAT_ATTR",
    "HEARTBEAT_WRITE_SECONDS",
    "MAX_REASON_CHARS",
    "MAX_STEP",
    "EventHook",
    "ReportServer",
    "Resolver",
    "create_report_app",
]

logger = logging.getLogger(__name__)

ACTIONS = ("report", "complete", "fail", "prune", "heartbeat")

_NUMBER_RE = re.compile(r"0|[1-9][0-9]{0,8}", re.ASCII)


class Resolver(Protocol):
    def __call__(self, namespace: str, study: str, /) -> optuna.Study | None: ...


class EventHook(Protocol):
    def __call__(
        self, kind: str, namespace: str, study: str, number: int | None, /, **fields: Any
    ) -> None: ...


# ---------------------------------------------------------------------------------------------
# HTTP


class _ReportAPI:
    def __init__(
        self,
        resolver: Resolver,
        signer: TokenSigner,
        *,
        max_body_bytes: int,
        clock: Callable[[], float],
        on_event: EventHook | None,
        executor: Executor | None,
        retry_after_seconds: int,
    ) -> None:
        self.resolver = resolver
        self.signer = signer
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.on_event = on_event
        self.executor = executor
        self.retry_after = str(retry_after_seconds)

    def _emit(self, kind: str, ns: str, study: str, number: int | None, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, ns, study, number, **fields)
        except Exception:
            logger.exception("Event hook failed kind=%s namespace=%s study=%s", kind, ns, study)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise error(413, f"body is larger than {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_body_bytes:
                raise error(413, f"body is larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authenticate(self, request: web.Request, ns: str, study: str, number: int) -> int:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        attempt = self.signer.verify(token.strip(), ns, study, number)
        if attempt is None:
            raise error(
                401,
                "token is not valid for this trial",
                **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return attempt

    def _run_blocking(
        self, action: str, path: tuple[str, str, int], attempt: int, args: Any
    ) -> Outcome:
        ns, study_name, number = path
        study = self.resolver(ns, study_name)
        if study is None:
            raise error(404, f"study {ns}/{study_name} not found")
        return run_action(study, number, attempt, action, args)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        ns = request.match_info["ns"]
        study = request.match_info["study"]
        raw_number = request.match_info["number"]
        number = int(raw_number) if _NUMBER_RE.fullmatch(raw_number) else None
        try:
            outcome = await self._dispatch(request, action, ns, study, number)
        except Reply as reply:
            outcome = Outcome(reply.status, reply.body)
            headers = reply.headers
        else:
            headers = {}
        self._emit("request", ns, study, number, action=action, code=outcome.status)
        for kind, fields in outcome.events:
            self._emit(kind, ns, study, number, **fields)
            logger.info(
                "Recorded %s namespace=%s study=%s trial=%s %s",
                kind,
                ns,
                study,
                number,
                " ".join(f"{k}={v}" for k, v in fields.items()),
            )
        return web.json_response(outcome.body, status=outcome.status, headers=headers)

    async def _dispatch(
        self, request: web.Request, action: str, ns: str, study: str, number: int | None
    ) -> Outcome:
        if action not in ACTIONS:
            raise error(404, f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if number is None:
            raise error(404, "trial number must be a non-negative integer")
        attempt = self._authenticate(request, ns, study, number)
        empty_ok = action in ("prune", "heartbeat")
        if request.content_type != "application/json" and not (
            empty_ok and not request.can_read_body
        ):
            raise error(415, f"content type must be application/json, got {request.content_type}")
        payload = decode_body(await self._read_body(request), empty_ok=empty_ok)
        args: Any = None
        if action == "report":
            args = (*parse_report(payload), float(self.clock()))
        elif action == "complete":
            args = parse_complete(payload)
        elif action == "fail":
            args = parse_fail(payload)
        elif action == "heartbeat":
            args = float(self.clock())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor, self._run_blocking, action, (ns, study, number), attempt, args
            )
        except Reply:
            raise
        except STORAGE_ERRORS as exc:
            # Expected and transient (a database outage, a study not opened yet or just
            # deleted): one line, no traceback; the trainer retries on the 503.
            logger.warning(
                "Failed to reach the trial ledger namespace=%s study=%s trial=%s action=%s "
                "error=%s",
                ns,
                study,
                number,
                action,
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
            )
            raise error(
                503, "trial ledger unavailable, retry later", **{"Retry-After": self.retry_after}
            ) from None
        except Exception:
            logger.exception(
                "Failed to handle report request namespace=%s study=%s trial=%s action=%s",
                ns,
                study,
                number,
                action,
            )
            raise error(500, "internal error") from None


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer aiohttp's own 404/405 in JSON too, so clients parse one shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)


def create_report_app(
    resolver: Resolver,
    signer: TokenSigner,
    *,
    max_body_bytes: int = 16384,
    clock: Callable[[], float] = time.time,
    on_event: EventHook | None = None,
    executor: Executor | None = None,
    retry_after_seconds: int = 5,
) -> web.Application:
    """Build the report API as an aiohttp application (mount it, or run it with ReportServer).

    Args:
        resolver: ``(namespace, study) -> optuna.Study | None``; None answers 404. It is
            called in the executor, so it may block (load_study).
        signer: verifies the per-trial tokens.
        max_body_bytes: larger bodies answer 413.
        clock: unix time for heartbeats.
        on_event: metrics hook, see the module docstring.
        executor: where Optuna calls run; None uses the loop's default executor.
        retry_after_seconds: the ``Retry-After`` sent with 503.
    """
    api = _ReportAPI(
        resolver,
        signer,
        max_body_bytes=max_body_bytes,
        clock=clock,
        on_event=on_event,
        executor=executor,
        retry_after_seconds=retry_after_seconds,
    )
    app = web.Application(middlewares=[_json_errors], client_max_size=max_body_bytes)
    app.router.add_post("/v1/namespaces/{ns}/studies/{study}/trials/{number}/{action}", api.handle)
    return app


class ReportServer:
    """Runs the report API on its own event loop in a daemon thread (local runner, tests).

    ``start()`` returns the base URL; ``stop()`` then ``start()`` again binds the same port,
    which is how a test plays an operator restart.
    """

    def __init__(
        self,
        resolver: Resolver,
        signer: TokenSigner,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **app_kwargs: Any,
    ) -> None:
        self._resolver = resolver
        self._signer = signer
        self._app_kwargs = app_kwargs
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("report server is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = create_report_app(self._resolver, self._signer, **self._app_kwargs)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
                await site.start()
                self.port = int(runner.addresses[0][1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                await runner.cleanup()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

        def main() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # pragma: no cover - surfaced through start()
                failure.append(exc)
                ready.set()

        thread = threading.Thread(target=main, name="kubetune-report-api", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread = thread
        logger.info("Started report API url=%s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = self._loop = self._stop = None
        logger.info("Stopped report API url=%s", self.base_url)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
