"""The tests' own client of the real kube-apiserver: plain REST over httpx, cluster-admin.

Why not the ``kubernetes`` package: the tests want JSON dicts in and out, a few lines per call,
and watches they can stop from another thread; the operator under test uses the official
client, so nothing here stands in for it. Errors are :class:`ApiError` with the server's
``Status`` (code, reason, message).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, code: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            root += f"/namespaces/{namespace}"
        root += f"/{self.plural}"
        if name:
            root += f"/{name}"
        if sub:
            root += f"/{sub}"
        return root


RESOURCES = {
    (
        r.plural
        if r.group in ("", "batch", "kubetune.io", "coordination.k8s.io", "apiextensions.k8s.io")
        else f"{r.plural}.{r.group}"
    ): r
    for r in (
        Resource("events.k8s.io", "v1", "events", "Event"),
        Resource("kubetune.io", "v1alpha1", "tuningstudies", "TuningStudy"),
        Resource("batch", "v1", "jobs", "Job"),
        Resource("", "v1", "pods", "Pod"),
        Resource("", "v1", "events", "Event"),
        Resource("", "v1", "secrets", "Secret"),
        Resource("", "v1", "configmaps", "ConfigMap"),
        Resource("", "v1", "serviceaccounts", "ServiceAccount"),
        Resource("", "v1", "namespaces", "Namespace", namespaced=False),
        Resource("", "v1", "nodes", "Node", namespaced=False),
        Resource("coordination.k8s.io", "v1", "leases", "Lease"),
        Resource(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            namespaced=False,
        ),
    )
}


def resource(name: str | Resource, group: str | None = None) -> Resource:
    """``resource("jobs")``; ``resource("events", group="events.k8s.io")`` for the new API."""
    if isinstance(name, Resource):
        return name
    return RESOURCES[f"{name}.{group}" if group and f"{name}.{group}" in RESOURCES else name]


def json_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A watch stream's lines, split at ``\\n`` only.

    Not httpx's ``iter_lines``: it splits like ``str.splitlines``, also at characters that a
    JSON string carries unescaped (U+0085 NEL, say, in a hostile spec), which cut one event in
    two and killed the watching thread.

    A connection cut mid-event leaves an unterminated tail: dropped, since the watch resumes
    from the last whole event's resourceVersion and receives it again.
    """
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines


def _kubeconfig_credentials(kubeconfig: Path) -> tuple[str, str, tuple[str, str]]:
    """(server, CA file, (cert, key)) of the kubeconfig's current context."""
    doc = yaml.safe_load(kubeconfig.read_text())
    ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
    cluster = next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    user = next(u for u in doc["users"] if u["name"] == ctx["user"])["user"]
    cert = (user["client-certificate"], user["client-key"])
    return cluster["server"], cluster["certificate-authority"], cert


class KubeApi:
    """Cluster-admin REST calls: ``get/find/list/create/replace/patch/delete/update_status``."""

    def __init__(self, kubeconfig: Path) -> None:
        server, ca, cert = _kubeconfig_credentials(kubeconfig)
        self.server = server
        self.ca_file = ca
        self.cert = cert
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(*cert)
        self._http = httpx.Client(base_url=server, verify=context, timeout=30.0)
        self._listeners: builtins.list[threading.Thread] = []
        self._stopping = threading.Event()

    @staticmethod
    def resource(name: str, group: str | None = None) -> Resource:
        return resource(name, group)

    def close(self) -> None:
        self._stopping.set()
        self._http.close()

    # ---- plain calls --------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._http.request(method, path, **kwargs)
        if answer.status_code >= 300:
            try:
                body = answer.json()
            except ValueError:
                body = {"message": answer.text}
            raise ApiError(answer.status_code, body.get("reason", ""), body.get("message", ""))
        return answer.json() if answer.content else None

    def get(self, kind: str | Resource, name: str, namespace: str | None = None) -> JSON:
        res = resource(kind)
        obj: JSON = self.request("GET", res.path(namespace, name))
        return obj

    def find(self, kind: str | Resource, name: str, namespace: str | None = None) -> JSON | None:
        try:
            return self.get(kind, name, namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(
        self,
        kind: str | Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[JSON]:
        """Items with ``apiVersion``/``kind`` filled in (a real list leaves them out)."""
        res = resource(kind)
        params = {
            k: v
            for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if v
        }
        body = self.request("GET", res.path(namespace), params=params)
        items: builtins.list[JSON] = body.get("items") or []
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items

    def create(
        self,
        kind: str | Resource,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
    ) -> JSON:
        res = resource(kind)
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        params = {"dryRun": "All"} if dry_run else {}
        obj: JSON = self.request("POST", res.path(namespace), json=dict(body), params=params)
        return obj

    def replace(
        self, kind: str | Resource, name: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> JSON:
        obj: JSON = self.request("PUT", resource(kind).path(namespace, name), json=dict(body))
        return obj

    def patch(
        self,
        kind: str | Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str = "",
        patch_type: str = "merge",
    ) -> JSON:
        content = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        obj: JSON = self.request(
            "PATCH",
            resource(kind).path(namespace, name, subresource),
            content=json.dumps(patch),
            headers={"Content-Type": content},
        )
        return obj

    def update_status(
        self, kind: str | Resource, name: str, status: JSON, namespace: str | None = None
    ) -> JSON:
        return self.patch(kind, name, {"status": status}, namespace, subresource="status")

    def delete(
        self,
        kind: str | Resource,
        name: str,
        namespace: str | None = None,
        propagation: str | None = None,
        *,
        grace_seconds: int | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> JSON:
        options: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            options["propagationPolicy"] = propagation
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if preconditions:
            options["preconditions"] = dict(preconditions)
        obj: JSON = self.request("DELETE", resource(kind).path(namespace, name), json=options)
        return obj

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.create("namespaces", {"metadata": {"name": name}})
        # Pods can be created only once the namespace's default ServiceAccount exists.
        self.wait_for(lambda: self.find("serviceaccounts", "default", name))

    # ---- waiting and watching -----------------------------------------------------------------

    @staticmethod
    def wait_for(
        predicate: Callable[[], Any],
        timeout: float = 300.0,
        interval: float = 0.05,
        message: str = "",
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; ``TimeoutError`` if never.

        The default deadline is generous (a loaded CI machine is slow); a passing wait never
        reaches it, and the error says how long it waited.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                what = message or f"condition {predicate!r}"
                raise TimeoutError(f"{what} (not met within {timeout:.0f} s)")
            time.sleep(interval)

    def watch(
        self,
        kind: str | Resource,
        namespace: str | None = None,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[str, JSON]]:
        """(type, object) forever: list first (as ADDED), then watch; relists on 410 Gone."""
        res = resource(kind)
        stop = stop or self._stopping
        params = {
            k: v
            for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if v
        }
        while not stop.is_set() and not self._stopping.is_set():
            try:
                listing = self.request("GET", res.path(namespace), params=params)
            except (ApiError, httpx.HTTPError):
                time.sleep(0.5)
                continue
            for item in listing.get("items") or []:
                item.setdefault("kind", res.kind)
                yield "ADDED", item
            version = listing["metadata"]["resourceVersion"]
            yield from self._stream(res, namespace, params, version, stop)

    def _stream(
        self,
        res: Resource,
        namespace: str | None,
        params: JSON,
        version: str,
        stop: threading.Event,
    ) -> Iterator[tuple[str, JSON]]:
        """One watch connection after another until 410 Gone (then the caller relists)."""
        while not stop.is_set() and not self._stopping.is_set():
            query = {
                **params,
                "watch": "true",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "30",
            }
            try:
                with self._http.stream(
                    "GET", res.path(namespace), params=query, timeout=httpx.Timeout(60.0)
                ) as answer:
                    if answer.status_code == 410:
                        return
                    for line in json_lines(answer.iter_bytes()):
                        if stop.is_set():
                            return
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") in (None, "ERROR"):  # 410 or a bare Status
                            return  # 410 Gone inside the stream: relist
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            yield event["type"], event["object"]
            except httpx.HTTPError:
                if self._stopping.is_set():
                    return
                time.sleep(0.2)

    def add_listener(
        self, callback: Callable[[str, str, JSON, JSON | None], None], kind: str = "jobs"
    ) -> None:
        """Call ``callback(key, type, object, None)`` for every event of ``kind``, from a thread."""

        def run() -> None:
            for event_type, obj in self.watch(kind):
                obj.setdefault("kind", resource(kind).kind)
                with contextlib.suppress(Exception):
                    callback(kind, event_type, obj, None)

        thread = threading.Thread(target=run, daemon=True, name=f"listener-{kind}")
        thread.start()
        self._listeners.append(thread)
