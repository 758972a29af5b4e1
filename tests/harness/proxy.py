"""A fault-injecting proxy between the operator and the real kube-apiserver.

The real server will not answer 429 or 500, hang, cut a watch or forget history on demand;
this proxy does, and otherwise forwards every request untouched (the client's bearer token
when it sends one, else the cluster-admin certificate). It also records what the operator asked
for, so a test can check least privilege or count 409s.

``proxy.faults.add(status=429, retry_after=1, path=r"/jobs$", verbs=("create",), times=3)``,
``probability=p``, ``every=n`` (every nth match, for faults a test must see),
``hang=True, hang_seconds=s``; ``proxy.drop_watches()`` closes every open
watch stream (clients must reconnect); ``proxy.gone_watches(n)`` answers the next ``n`` watch
requests with ``410 Gone``, as a server that compacted its history does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["FaultProxy", "FaultRule", "Faults", "RequestRecord", "write_kubeconfig"]

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str | None
    name: str | None
    status: int


@dataclasses.dataclass
class FaultRule:
    """Answer matching requests with ``status`` (or hang) instead of forwarding them."""

    path: str = ".*"  # regex searched in the request path
    methods: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()  # Kubernetes verbs (get, list, watch, create, patch, ...)
    status: int = 500
    retry_after: int | None = None
    hang: bool = False  # hold the request for ``hang_seconds``, then forward it
    hang_seconds: float = 30.0
    probability: float = 1.0
    every: int | None = None  # hit every Nth match (deterministic; overrides probability)
    times: int | None = None  # how many more requests to hit; None: until removed
    hits: int = 0
    seen: int = 0

    def fires(self, draw: float) -> bool:
        self.seen += 1
        if self.every is not None:
            return self.seen % self.every == 0
        return draw < self.probability

    def matches(self, method: str, path: str, verb: str) -> bool:
        return (
            (not self.methods or method in self.methods)
            and (not self.verbs or verb in self.verbs)
            and re.search(self.path, path) is not None
            and (self.times is None or self.times > 0)
        )


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def add(self, **kwargs: Any) -> FaultRule:
        rule = FaultRule(**kwargs)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @contextlib.contextmanager
    def active(self, **kwargs: Any) -> Iterator[FaultRule]:
        rule = self.add(**kwargs)
        try:
            yield rule
        finally:
            self.remove(rule)

    def pick(self, method: str, path: str, verb: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, verb) and rule.fires(self._random.random()):
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None


_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<resource>[^/]+))?(?:/(?P<name>[^/]+))?"
    r"(?:/(?P<sub>[^/]+))?$"
)


def describe(method: str, path: str, query: dict[str, str], status: int) -> RequestRecord:
    """The Kubernetes verb and resource of a request, as the apiserver's authorizer sees it."""
    m = _PATH.match(path)
    parts = m.groupdict() if m else {}
    resource, name, ns = parts.get("resource"), parts.get("name"), parts.get("ns")
    if resource is None and ns is not None:  # /api/v1/namespaces/NAME
        resource, name, ns = "namespaces", ns, None
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
    if method == "GET":
        watching = query.get("watch") in ("1", "true")
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    return RequestRecord(
        method,
        path,
        "&".join(f"{k}={v}" for k, v in query.items()),
        verb,
        parts.get("group") or "",
        resource or "",
        parts.get("sub") or "",
        ns,
        name,
        status,
    )


class FaultProxy:
    """Plain HTTP on 127.0.0.1 in front of the apiserver's HTTPS; runs in its own thread."""

    def __init__(self, upstream: str, ca_file: str, cert: tuple[str, str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        #: The bodies of every write the clients sent (for leak checks).
        self.bodies: list[str] = []
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._ssl.load_cert_chain(*cert)
        self._bare_ssl = ssl.create_default_context(cafile=ca_file)
        self._watches: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        #: Pending 410 answers: the resource each is for (None: the next watch of any).
        self._gone: list[str | None] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self.port = 0

    # ---- test-facing ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_for(self, resource: str | None = None, verb: str | None = None) -> list[Any]:
        return [
            r
            for r in list(self.requests)
            if (resource is None or r.resource == resource) and (verb is None or r.verb == verb)
        ]

    def drop_watches(self) -> None:
        def cut() -> None:
            for task in list(self._watches):
                task.cancel()

        self._loop.call_soon_threadsafe(cut)

    def gone_watches(self, count: int = 1, resource: str | None = None) -> None:
        """The next ``count`` watches (of ``resource``, or of anything) get 410 ``Expired``.

        Name the resource where another client may watch through the proxy meanwhile (an
        operator still stopping, a reconnecting informer): it would take the 410 instead.
        """
        with self._lock:
            self._gone.extend([resource] * count)

    def clear_gone(self) -> None:
        with self._lock:
            self._gone.clear()

    def _take_gone(self, resource: str | None) -> bool:
        with self._lock:
            for i, wanted in enumerate(self._gone):
                if wanted is None or wanted == resource:
                    del self._gone[i]
                    return True
        return False

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(15)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for task in list(self._watches):
                task.cancel()
            await self._runner.cleanup()
            await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # ---- forwarding -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        record = describe(request.method, request.path, query, 0)
        rule = self.faults.pick(request.method, request.path, record.verb)
        if rule is not None and not rule.hang:
            self._log(record, rule.status)
            return _status_response(rule.status, rule.retry_after)
        if rule is not None:
            await asyncio.sleep(rule.hang_seconds)
        if record.verb == "watch" and self._take_gone(record.resource):
            self._log(record, 410)
            return _expired_watch()
        task = asyncio.current_task()
        if record.verb == "watch" and task is not None:
            self._watches.add(task)
        try:
            return await self._forward(request, record)
        except asyncio.CancelledError:
            # drop_watches(): end the stream without a clean terminator, as a cut connection.
            raise
        finally:
            if task is not None:
                self._watches.discard(task)

    async def _forward(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        if body and request.method in ("POST", "PUT", "PATCH"):
            self.bodies.append(body.decode(errors="replace"))
        context = self._bare_ssl if "Authorization" in request.headers else self._ssl
        async with self._session.request(
            request.method,
            self.upstream + str(request.rel_url),
            headers=headers,
            data=body or None,
            ssl=context,
            skip_auto_headers=("Content-Type", "Accept-Encoding"),
        ) as upstream:
            self._log(record, upstream.status)
            answer = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:  # Content-Encoding too: the body stays as sent
                    answer.headers[key] = value
            await answer.prepare(request)
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    def _log(self, record: RequestRecord, status: int) -> None:
        self.requests.append(dataclasses.replace(record, status=status))


def _status_response(code: int, retry_after: int | None = None) -> web.Response:
    reason = {
        404: "NotFound",
        409: "Conflict",
        410: "Expired",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
    }.get(code, "Unknown")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": f"injected by the test proxy: {code} {reason}",
        },
        status=code,
        headers=headers,
    )


def _expired_watch() -> web.Response:
    """What the apiserver sends when a watch asks for a compacted resourceVersion: HTTP 200 and
    one ERROR event carrying a 410 ``Expired`` Status; the client must relist."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version: 1 (injected by the test proxy)",
    }
    return web.Response(
        text=json.dumps({"type": "ERROR", "object": status}) + "\n", content_type="application/json"
    )


def write_kubeconfig(path: Path, server: str, token: str | None = None) -> Path:
    """A kubeconfig for ``server`` (the proxy, plain HTTP), optionally with a bearer token."""
    user = {"token": token} if token else {}
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: test, cluster: {{server: '{server}'}}}}]\n"
        f"users: [{{name: test, user: {user or '{}'}}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test, namespace: default}}]\n"
        "current-context: test\n"
    )
    return path
