"""An emulated Kubernetes API server over real HTTP on 127.0.0.1, for tests only.

Why our own aiohttp server rather than a kmock subclass: kmock 0.8 lacks most of what kopf and
the ``kubernetes`` client need (uids, resource versions, watch replay from a version, PUT,
selectors, garbage collection, status subresource semantics), so a subclass would override
nearly everything; a small server we fully control is shorter and easier to keep honest.

The store is thread-safe and synchronous, so tests and the fake kubelet may use it from their
own threads; HTTP is served by aiohttp on a private event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import dataclasses
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ._k8s import (
    JSON,
    ApiError,
    apply_defaults,
    json_patch,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    prune,
    rfc3339,
    schema_errors,
    utcnow,
)

__all__ = ["JSON", "ApiError", "EmulatedApi", "FaultRule", "RequestRecord", "ResourceType"]

_LOGGED = web.RequestKey("kubetune-logged", bool)
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "log", "eviction"
    schema: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    default_propagation: str = "Background"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified(self) -> str:
        """The name used in messages, like ``tuningstudies.kubetune.io``."""
        return self.store_key


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str | None
    name: str | None
    status: int


@dataclasses.dataclass
class FaultRule:
    """Answer matching requests with ``status`` (or hang) instead of serving them."""

    path: str = ".*"  # regex searched in the request path
    methods: tuple[str, ...] = ()  # empty: any method
    verbs: tuple[str, ...] = ()  # Kubernetes verbs (get, list, watch, patch, ...); empty: any
    status: int = 500
    retry_after: int | None = None
    hang: bool = False  # hold the request until the rule is removed or ``hang_seconds`` pass
    hang_seconds: float = 30.0
    probability: float = 1.0
    times: int | None = None  # how many more requests to hit; None: until removed
    hits: int = 0

    def matches(self, method: str, path: str, verb: str) -> bool:
        return (
            (not self.methods or method in self.methods)
            and (not self.verbs or verb in self.verbs)
            and re.search(self.path, path) is not None
            and (self.times is None or self.times > 0)
        )


class Faults:
    """The fault injector: ``api.faults.add(status=429, retry_after=1, path='/jobs')``."""

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

    def is_active(self, rule: FaultRule) -> bool:
        with self._lock:
            return rule in self._rules

    def pick(self, method: str, path: str, verb: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, verb) and self._random.random() < rule.probability:
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None


@dataclasses.dataclass
class _Event:
    rv: int
    key: str
    namespace: str | None
    type: str
    obj: JSON
    old: JSON | None


class _Watcher:
    def __init__(
        self,
        rtype: ResourceType,
        namespace: str | None,
        matches: Callable[[JSON], bool],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.rtype = rtype
        self.namespace = namespace
        self.matches = matches
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, JSON] | None] = asyncio.Queue()

    def offer(self, event: _Event) -> None:
        if event.key != self.rtype.store_key:
            return
        if self.namespace is not None and event.namespace != self.namespace:
            return
        now_matches = self.matches(event.obj)
        was_matching = event.old is not None and self.matches(event.old)
        kind = event.type
        if kind == "MODIFIED" and not now_matches and was_matching:
            kind = "DELETED"  # left the selector: watchers see it disappear
        elif kind == "MODIFIED" and now_matches and not was_matching:
            kind = "ADDED"
        elif not now_matches:
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, event.obj))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def _core_types() -> list[ResourceType]:
    return [
        ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), ("status",)),
        ResourceType("", "v1", "pods", "Pod", True, "pod", ("po",), ("status", "log", "eviction")),
        ResourceType("", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
        ResourceType("", "v1", "secrets", "Secret", True, "secret"),
        ResourceType("", "v1", "services", "Service", True, "service", ("svc",), ("status",)),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount"),
        ResourceType(
            "batch", "v1", "jobs", "Job", True, "job", (), ("status",), None, "Orphan"
        ),  # batch/v1 Jobs default to orphaning their pods, as on a real cluster
        ResourceType("events.k8s.io", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            "customresourcedefinition",
            ("crd", "crds"),
            ("status",),
        ),
    ]


class EmulatedApi:
    """The store, the HTTP server around it, the request log and the fault injector."""

    def __init__(self, clock: Callable[[], Any] = utcnow, seed: int = 0) -> None:
        self.clock = clock
        self.faults = Faults(seed)
        self.requests: list[RequestRecord] = []
        self.types: list[ResourceType] = []
        self.log_provider: Callable[[str, str, Mapping[str, str]], str] | None = None
        self.eviction_handler: Callable[[str, str], None] | None = None
        self._lock = threading.RLock()
        self._rv = itertools.count(1)
        self._current_rv = 0
        self._objects: dict[str, dict[tuple[str | None, str], JSON]] = {}
        self._history: list[_Event] = []
        self._watchers: list[_Watcher] = []
        self._propagation: dict[str, str] = {}  # uid -> policy of a pending deletion
        self._listeners: list[Callable[[str, str, JSON, JSON | None], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        for rtype in _core_types():
            self.register_type(rtype)
        for ns in ("default", "kube-system"):
            self.create("namespaces", {"metadata": {"name": ns}})

    # ---- types ------------------------------------------------------------------------------

    def register_type(self, rtype: ResourceType) -> None:
        with self._lock:
            self.types = [
                t
                for t in self.types
                if (t.group, t.version, t.plural) != (rtype.group, rtype.version, rtype.plural)
            ]
            self.types.append(rtype)
            self._objects.setdefault(rtype.store_key, {})

    def register_crd(self, crd: Mapping[str, Any] | str | Path) -> list[ResourceType]:
        """Serve a CustomResourceDefinition (manifest dict, YAML text or a YAML file path)."""
        if isinstance(crd, Path) or (isinstance(crd, str) and "\n" not in crd):
            crd = yaml.safe_load(Path(crd).read_text())
        elif isinstance(crd, str):
            crd = yaml.safe_load(crd)
        assert isinstance(crd, Mapping), "a CRD manifest must be a mapping"
        spec = crd["spec"]
        names = spec["names"]
        added = []
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            subresources = tuple(
                name for name in ("status", "scale") if name in (version.get("subresources") or {})
            )
            rtype = ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=tuple(names.get("shortNames", ())),
                subresources=subresources,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
            self.register_type(rtype)
            added.append(rtype)
        with contextlib.suppress(ApiError):
            self.create("customresourcedefinitions", crd)
        return added

    def resource(self, name: str, group: str | None = None) -> ResourceType:
        """Find a type by plural, ``plural.group``, kind or short name (core group wins ties)."""
        with self._lock:
            for rtype in sorted(self.types, key=lambda t: (t.group != "", t.group)):
                if group is not None and rtype.group != group:
                    continue
                if name in (rtype.plural, rtype.store_key, rtype.kind, *rtype.short_names):
                    return rtype
        raise KeyError(f"no resource type {name!r}")

    def _lookup(self, group: str, version: str, plural: str) -> ResourceType:
        with self._lock:
            for rtype in self.types:
                if (rtype.group, rtype.version, rtype.plural) == (group, version, plural):
                    return rtype
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # ---- store primitives (caller holds no lock) --------------------------------------------

    def _new_meta(self) -> JSON:
        rv = next(self._rv)
        self._current_rv = rv
        return {
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(rv),
            "creationTimestamp": rfc3339(self.clock()),
        }

    def _commit(self, rtype: ResourceType, kind: str, obj: JSON, old: JSON | None) -> JSON:
        """Record an event; ``obj`` is owned by the store afterwards (callers get copies)."""
        rv = next(self._rv)
        self._current_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        ns = obj["metadata"].get("namespace")
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self._objects[rtype.store_key].pop((ns, name), None)
        else:
            self._objects[rtype.store_key][(ns, name)] = obj
        snapshot = copy.deepcopy(obj)
        snapshot["apiVersion"] = rtype.api_version
        snapshot["kind"] = rtype.kind
        event = _Event(rv, rtype.store_key, ns, kind, snapshot, copy.deepcopy(old))
        self._history.append(event)
        for watcher in list(self._watchers):
            watcher.offer(event)
        for listener in list(self._listeners):
            listener(rtype.store_key, kind, snapshot, event.old)
        return copy.deepcopy(snapshot)

    def add_listener(self, callback: Callable[[str, str, JSON, JSON | None], None]) -> None:
        """``callback(store_key, event_type, object, old_object)``, called under the lock."""
        with self._lock:
            self._listeners.append(callback)

    @property
    def resource_version(self) -> str:
        return str(self._current_rv)

    def _get(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON:
        ns = namespace if rtype.namespaced else None
        obj = self._objects[rtype.store_key].get((ns, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{rtype.qualified} "{name}" not found',
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )
        return obj

    def _prepare(self, rtype: ResourceType, obj: JSON, name: str) -> JSON:
        """Prune, default and validate a custom resource against its schema."""
        if rtype.schema is None:
            return obj
        obj = prune(obj, rtype.schema, root=True)
        obj = apply_defaults(obj, rtype.schema)
        errors = schema_errors(obj, rtype.schema)
        if errors:
            raise ApiError(
                422,
                "Invalid",
                f'{rtype.kind}.{rtype.group} "{name}" is invalid: ' + "; ".join(errors),
                {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.kind,
                    "causes": [{"message": e} for e in errors],
                },
            )
        return obj

    # ---- verbs (thread-safe, used by HTTP handlers, the kubelet and tests) -------------------

    def _rtype(self, resource: str | ResourceType) -> ResourceType:
        return resource if isinstance(resource, ResourceType) else self.resource(resource)

    def get(self, resource: str | ResourceType, name: str, namespace: str | None = None) -> JSON:
        rtype = self._rtype(resource)
        with self._lock:
            obj = copy.deepcopy(self._get(rtype, namespace, name))
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        return obj

    def find(
        self, resource: str | ResourceType, name: str, namespace: str | None = None
    ) -> JSON | None:
        try:
            return self.get(resource, name, namespace)
        except ApiError:
            return None

    def list(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JSON]:
        rtype = self._rtype(resource)
        labels_ok = parse_label_selector(label_selector)
        fields_ok = parse_field_selector(field_selector)
        with self._lock:
            items = []
            for (ns, _), obj in sorted(
                self._objects[rtype.store_key].items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            ):
                if namespace is not None and rtype.namespaced and ns != namespace:
                    continue
                if labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj):
                    item = copy.deepcopy(obj)
                    item["apiVersion"] = rtype.api_version
                    item["kind"] = rtype.kind
                    items.append(item)
        return items

    def create(
        self, resource: str | ResourceType, body: Mapping[str, Any], namespace: str | None = None
    ) -> JSON:
        rtype = self._rtype(resource)
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        namespace = namespace or meta.get("namespace") or ("default" if rtype.namespaced else None)
        if rtype.namespaced and meta.get("namespace") not in (None, namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent "
                "on the request",
            )
        with self._lock:
            if rtype.namespaced and (None, namespace) not in self._objects["namespaces"]:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            name = meta.get("name")
            if not name:
                prefix = meta.get("generateName")
                if not prefix:
                    raise ApiError(
                        422,
                        "Invalid",
                        f"{rtype.kind} is invalid: metadata.name: Required value: "
                        "name or generateName is required",
                    )
                while True:
                    name = prefix + uuid.uuid4().hex[:5]
                    if (namespace if rtype.namespaced else None, name) not in self._objects[
                        rtype.store_key
                    ]:
                        break
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rtype.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                    "characters, '-' or '.'",
                )
            key = (namespace if rtype.namespaced else None, name)
            if key in self._objects[rtype.store_key]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rtype.qualified} "{name}" already exists',
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            for field in (
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "uid",
            ):
                meta.pop(field, None)
            meta.update(self._new_meta())
            meta["generation"] = 1
            obj["apiVersion"] = rtype.api_version
            obj["kind"] = rtype.kind
            if "status" in rtype.subresources and rtype.store_key != "namespaces":
                obj.pop("status", None)
            if rtype.store_key == "namespaces":
                obj["status"] = {"phase": "Active"}
            obj = self._prepare(rtype, obj, name)
            result = self._commit(rtype, "ADDED", obj, None)
            owners = [ref.get("uid") for ref in meta.get("ownerReferences") or []]
            if owners and not any(self._find_uid(uid) for uid in owners):
                # The garbage collector removes dependents whose owners are all gone.
                self._delete(rtype, key[0], name, "Background")
            return result

    def _find_uid(self, uid: str | None) -> bool:
        return any(
            obj["metadata"].get("uid") == uid
            for objs in self._objects.values()
            for obj in objs.values()
        )

    def _write(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        mutate: Callable[[JSON], JSON],
        *,
        subresource: str = "",
        check_rv: bool = True,
    ) -> JSON:
        with self._lock:
            old = self._get(rtype, namespace, name)
            new = mutate(copy.deepcopy(old))
            if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
                raise ApiError(400, "BadRequest", "the object must be a JSON object with metadata")
            new_meta = new.setdefault("metadata", {})
            given_rv = new_meta.get("resourceVersion")
            if check_rv and given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {rtype.qualified} "
                    f'"{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            if new_meta.get("name", name) != name:
                raise ApiError(
                    400, "BadRequest", "the name of the object does not match the name on the URL"
                )
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            else:
                if "status" in rtype.subresources:
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                    else:
                        new.pop("status", None)
                for field in (
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ):
                    if field in old["metadata"]:
                        new["metadata"][field] = old["metadata"][field]
                    else:
                        new["metadata"].pop(field, None)
                if "deletionTimestamp" in old["metadata"]:
                    added = set(new["metadata"].get("finalizers") or []) - set(
                        old["metadata"].get("finalizers") or []
                    )
                    if added:
                        raise ApiError(
                            422,
                            "Invalid",
                            f'{rtype.kind} "{name}" is invalid: metadata.finalizers: Forbidden: '
                            "no new finalizers can be added if the object is being deleted",
                        )
            new["apiVersion"] = rtype.api_version
            new["kind"] = rtype.kind
            new = self._prepare(rtype, new, name)
            spec_old = {
                k: v
                for k, v in old.items()
                if k not in ("metadata", "status", "apiVersion", "kind")
            }
            spec_new = {
                k: v
                for k, v in new.items()
                if k not in ("metadata", "status", "apiVersion", "kind")
            }
            if spec_old != spec_new:
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return copy.deepcopy(old)  # no-op writes do not bump the resourceVersion
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                self._commit(rtype, "MODIFIED", new, old)
                propagation = self._propagation.get(new["metadata"]["uid"], "Background")
                return self._remove(rtype, new, propagation)
            return self._commit(rtype, "MODIFIED", new, old)

    def replace(
        self,
        resource: str | ResourceType,
        name: str,
        body: Mapping[str, Any],
        namespace: str | None = None,
        subresource: str = "",
    ) -> JSON:
        rtype = self._rtype(resource)
        return self._write(
            rtype, namespace, name, lambda _old: copy.deepcopy(dict(body)), subresource=subresource
        )

    def patch(
        self,
        resource: str | ResourceType,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str = "",
        patch_type: str = "merge",
    ) -> JSON:
        """``patch_type``: ``merge`` (also for strategic merge) or ``json``."""
        rtype = self._rtype(resource)

        def mutate(old: JSON) -> JSON:
            if patch_type == "json":
                return json_patch(old, patch)  # type: ignore[no-any-return]
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            result: JSON = merge_patch(old, patch)
            given = (patch.get("metadata") or {}).get("resourceVersion")
            result.setdefault("metadata", {})["resourceVersion"] = given
            return result

        return self._write(rtype, namespace, name, mutate, subresource=subresource)

    def update_status(
        self, resource: str | ResourceType, name: str, status: JSON, namespace: str | None = None
    ) -> JSON:
        """Replace the whole status (what a controller does), without version checks."""
        rtype = self._rtype(resource)

        def mutate(old: JSON) -> JSON:
            old["status"] = copy.deepcopy(status)
            return old

        return self._write(rtype, namespace, name, mutate, subresource="status", check_rv=False)

    def delete(
        self,
        resource: str | ResourceType,
        name: str,
        namespace: str | None = None,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> JSON:
        rtype = self._rtype(resource)
        with self._lock:
            obj = self._get(rtype, namespace, name)
            for field in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field)
                if wanted and obj["metadata"].get(field) != wanted:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"Precondition failed: {field} in precondition: {wanted}, "
                        f"{field} in object meta: {obj['metadata'].get(field)}",
                    )
            return self._delete(rtype, namespace, name, propagation or rtype.default_propagation)

    def _delete(
        self, rtype: ResourceType, namespace: str | None, name: str, propagation: str
    ) -> JSON:
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise ApiError(
                400,
                "BadRequest",
                f"propagationPolicy must be Background, Foreground or Orphan, not {propagation!r}",
            )
        obj = self._get(rtype, namespace, name)
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if propagation == "Foreground":
            self._cascade(obj["metadata"]["uid"], "Background")
        if finalizers:
            if obj["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(obj)
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = rfc3339(self.clock())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self._propagation[new["metadata"]["uid"]] = propagation
            return self._commit(rtype, "MODIFIED", new, obj)
        return self._remove(rtype, obj, propagation)

    def _remove(self, rtype: ResourceType, obj: JSON, propagation: str) -> JSON:
        current = self._get(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        final = copy.deepcopy(current)
        self._propagation.pop(final["metadata"]["uid"], None)
        result = self._commit(rtype, "DELETED", final, current)
        self._cascade(final["metadata"]["uid"], propagation)
        return result

    def _cascade(self, owner_uid: str, propagation: str) -> None:
        """The garbage collector: dependents of a removed owner are deleted or orphaned."""
        for rtype in list(self.types):
            for (ns, name), dep in list(self._objects.get(rtype.store_key, {}).items()):
                refs = dep["metadata"].get("ownerReferences") or []
                if not any(ref.get("uid") == owner_uid for ref in refs):
                    continue
                if rtype.api_version != dep.get("apiVersion", rtype.api_version):
                    continue  # one stored copy per group/plural; visit it once
                if propagation == "Orphan":
                    new = copy.deepcopy(dep)
                    new["metadata"]["ownerReferences"] = [
                        r for r in refs if r.get("uid") != owner_uid
                    ] or None
                    if new["metadata"]["ownerReferences"] is None:
                        del new["metadata"]["ownerReferences"]
                    self._commit(rtype, "MODIFIED", new, dep)
                    continue
                others = [
                    r for r in refs if r.get("uid") != owner_uid and self._find_uid(r.get("uid"))
                ]
                if others:
                    continue  # still owned by someone alive
                with contextlib.suppress(ApiError):
                    self._delete(rtype, ns, name, "Background")

    # ---- helpers for tests --------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.create("namespaces", {"metadata": {"name": name}})

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 20.0,
        interval: float = 0.02,
        message: str = "",
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` if never."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(message or f"condition not met in {timeout}s: {predicate!r}")
            time.sleep(interval)

    def requests_for(
        self, resource: str | None = None, verb: str | None = None
    ) -> builtins.list[RequestRecord]:
        return [
            r
            for r in list(self.requests)
            if (resource is None or r.resource == resource) and (verb is None or r.verb == verb)
        ]

    def drop_watches(self) -> None:
        """Close every open watch stream server-side (clients must reconnect)."""
        with self._lock:
            for watcher in list(self._watchers):
                watcher.close()

    # ---- server lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatedApi:
        ready = threading.Event()
        errors: builtins.list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="emulated-apiserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        self.drop_watches()
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> EmulatedApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(
        self, path: str | Path, namespace: str = "default", token: str = "emulated-token"
    ) -> Path:
        """A kubeconfig for kopf, ``kubectl`` and the ``kubernetes`` client (token, no TLS)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {"cluster": "emulated", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulated",
            "preferences": {},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # ---- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        query = request.rel_url.query
        route = self._route(path)
        verb = self._verb(request.method, route, query)
        status = 200
        try:
            rule = self.faults.pick(request.method, path, verb)
            if rule is not None:
                if rule.hang:
                    deadline = time.monotonic() + rule.hang_seconds
                    while self.faults.is_active(rule) and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                else:
                    status = rule.status
                    headers = (
                        {"Retry-After": str(rule.retry_after)}
                        if rule.retry_after is not None
                        else {}
                    )
                    reason = {
                        429: "TooManyRequests",
                        500: "InternalError",
                        503: "ServiceUnavailable",
                        504: "Timeout",
                    }.get(status, "InternalError")
                    error = ApiError(status, reason, f"injected fault ({status})")
                    return web.json_response(error.status(), status=status, headers=headers)
            response = await self._dispatch(request, route, verb)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.code
            return web.json_response(exc.status(), status=exc.code)
        except json.JSONDecodeError as exc:
            status = 400
            return web.json_response(
                ApiError(400, "BadRequest", f"invalid JSON body: {exc}").status(), status=400
            )
        finally:
            if not request.get(_LOGGED):
                self._log_request(request, route, verb, status)

    def _log_request(
        self, request: web.Request, route: Mapping[str, Any], verb: str, status: int
    ) -> None:
        request[_LOGGED] = True
        self.requests.append(
            RequestRecord(
                request.method,
                request.path.rstrip("/") or "/",
                request.query_string,
                verb,
                route.get("group", ""),
                route.get("version", ""),
                route.get("resource", ""),
                route.get("subresource", ""),
                route.get("namespace"),
                route.get("name"),
                status,
            )
        )

    def _route(self, path: str) -> dict[str, Any]:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            return {"kind": "other", "path": path}
        if parts[0] == "api":
            if len(parts) == 1:
                return {"kind": "core-versions"}
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return {"kind": "groups"}
            if len(parts) == 2:
                return {"kind": "group", "group": parts[1]}
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            return {"kind": "resources", "group": group, "version": version}
        namespace = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        route: dict[str, Any] = {
            "kind": "object",
            "group": group,
            "version": version,
            "namespace": namespace,
            "resource": rest[0],
            "name": rest[1] if len(rest) > 1 else None,
            "subresource": rest[2] if len(rest) > 2 else "",
        }
        if len(rest) > 3:
            return {"kind": "other", "path": path}
        return route

    @staticmethod
    def _verb(method: str, route: Mapping[str, Any], query: Mapping[str, str]) -> str:
        if route.get("kind") != "object":
            return "get"
        named = route.get("name") is not None
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if named else "list"
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }.get(method, method.lower())

    async def _dispatch(
        self, request: web.Request, route: Mapping[str, Any], verb: str
    ) -> web.StreamResponse:
        kind = route["kind"]
        if kind == "other":
            if route["path"] in ("/healthz", "/readyz", "/livez"):
                return web.Response(text="ok")
            if route["path"] == "/version":
                return web.json_response(
                    {
                        "major": "1",
                        "minor": "31",
                        "gitVersion": "v1.31.0-emulated",
                        "platform": "linux/amd64",
                    }
                )
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind == "core-versions":
            return web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                }
            )
        if kind == "groups":
            return web.json_response(
                {"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()}
            )
        if kind == "group":
            for group in self._groups():
                if group["name"] == route["group"]:
                    return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind == "resources":
            return web.json_response(self._resource_list(route["group"], route["version"]))
        return await self._object_request(request, route, verb)

    def _groups(self) -> builtins.list[JSON]:
        with self._lock:
            versions: dict[str, builtins.list[str]] = {}
            for rtype in self.types:
                if rtype.group and rtype.version not in versions.setdefault(rtype.group, []):
                    versions[rtype.group].append(rtype.version)
        groups = []
        for name, vers in sorted(versions.items()):
            entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in vers]
            groups.append({"name": name, "versions": entries, "preferredVersion": entries[0]})
        return groups

    def _resource_list(self, group: str, version: str) -> JSON:
        resources = []
        with self._lock:
            matching = [t for t in self.types if (t.group, t.version) == (group, version)]
        if not matching:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        for rtype in sorted(matching, key=lambda t: t.plural):
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": rtype.singular,
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ALL_VERBS,
                    "shortNames": list(rtype.short_names),
                }
            )
            for sub in rtype.subresources:
                verbs, sub_kind = {
                    "status": (["get", "patch", "update"], rtype.kind),
                    "log": (["get"], "Pod"),
                    "eviction": (["create"], "Eviction"),
                    "scale": (["get", "patch", "update"], "Scale"),
                }[sub]
                resources.append(
                    {
                        "name": f"{rtype.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": sub_kind,
                        "verbs": verbs,
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        ctype = request.content_type
        if "yaml" in ctype:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                f"include: application/json (got {ctype})",
            )
        if "protobuf" in ctype:
            raise ApiError(
                415, "UnsupportedMediaType", "protobuf is not supported by the emulated API server"
            )
        return json.loads(raw)

    async def _object_request(
        self, request: web.Request, route: Mapping[str, Any], verb: str
    ) -> web.StreamResponse:
        rtype = self._lookup(route["group"], route["version"], route["resource"])
        ns = route["namespace"]
        name = route["name"]
        sub = route["subresource"]
        query = request.rel_url.query
        if ns is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub and sub not in rtype.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rtype.namespaced and name is not None and ns is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "watch":
            return await self._watch(request, rtype, ns, query)
        if verb == "list":
            items = self.list(rtype, ns, query.get("labelSelector"), query.get("fieldSelector"))
            rv = self.resource_version
            limit = int(query.get("limit", "0") or 0)
            start = int(query.get("continue") or 0)
            cont = ""
            if limit > 0:
                if start + limit < len(items):
                    cont = str(start + limit)
                items = items[start : start + limit]
            return web.json_response(
                {
                    "kind": f"{rtype.kind}List",
                    "apiVersion": rtype.api_version,
                    "metadata": {"resourceVersion": rv, "continue": cont},
                    "items": items,
                }
            )
        if verb == "get":
            if sub == "log":
                if self.log_provider is None:
                    raise ApiError(404, "NotFound", "no logs available")
                self.get(rtype, name, ns)
                return web.Response(
                    text=self.log_provider(ns, name, query), content_type="text/plain"
                )
            return web.json_response(self.get(rtype, name, ns))
        if verb == "create":
            body = await self._body(request)
            if sub == "eviction":
                self.get(rtype, name, ns)
                if self.eviction_handler is None:
                    raise ApiError(429, "TooManyRequests", "no eviction handler")
                self.eviction_handler(ns, name)
                return web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Success",
                        "metadata": {},
                        "code": 201,
                    },
                    status=201,
                )
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            return web.json_response(self.create(rtype, body, ns), status=201)
        if verb == "update":
            body = await self._body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            return web.json_response(self.replace(rtype, name, body, ns, sub))
        if verb == "patch":
            body = await self._body(request)
            ctype = request.content_type
            if ctype == "application/json-patch+json":
                patch_type = "json"
            elif ctype in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                patch_type = "merge"
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (got {ctype})",
                )
            patched = self.patch(rtype, name, body, ns, subresource=sub, patch_type=patch_type)
            return web.json_response(patched)
        if verb in ("delete", "deletecollection"):
            body = await self._body(request)
            body = body if isinstance(body, dict) else {}
            propagation = query.get("propagationPolicy") or body.get("propagationPolicy")
            orphan = query.get("orphanDependents") or body.get("orphanDependents")
            if propagation is None and orphan is not None:
                propagation = "Orphan" if str(orphan).lower() == "true" else "Background"
            if verb == "delete":
                return web.json_response(
                    self.delete(rtype, name, ns, propagation, body.get("preconditions"))
                )
            for item in self.list(
                rtype, ns, query.get("labelSelector"), query.get("fieldSelector")
            ):
                with contextlib.suppress(ApiError):
                    self.delete(
                        rtype,
                        item["metadata"]["name"],
                        item["metadata"].get("namespace"),
                        propagation,
                    )
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
            )
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here")

    async def _watch(
        self, request: web.Request, rtype: ResourceType, ns: str | None, query: Mapping[str, str]
    ) -> web.StreamResponse:
        labels_ok = parse_label_selector(query.get("labelSelector"))
        fields_ok = parse_field_selector(query.get("fieldSelector"))

        def matches(obj: JSON) -> bool:
            return labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj)

        since = query.get("resourceVersion")
        initial = query.get("sendInitialEvents") == "true" or since in (None, "", "0")
        timeout = float(query.get("timeoutSeconds", "0") or 0) or None
        loop = asyncio.get_running_loop()
        watcher = _Watcher(rtype, ns, matches, loop)
        backlog: builtins.list[tuple[str, JSON]] = []
        with self._lock:
            if initial:
                backlog = [("ADDED", obj) for obj in self.list(rtype, ns) if matches(obj)]
            else:
                assert since is not None
                start = int(since) if since.isdigit() else 0
                for event in self._history:
                    if event.rv <= start or event.key != rtype.store_key:
                        continue
                    if ns is not None and event.namespace != ns:
                        continue
                    now_in = matches(event.obj)
                    if now_in or (event.old is not None and matches(event.old)):
                        kind = event.type
                        was_in = event.old is not None and matches(event.old)
                        if kind == "MODIFIED" and not now_in:
                            kind = "DELETED"
                        elif kind == "MODIFIED" and not was_in:
                            kind = "ADDED"
                        backlog.append((kind, event.obj))
            bookmark_rv = self.resource_version
            self._watchers.append(watcher)
        self._log_request(request, self._route(request.path.rstrip("/")), "watch", 200)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        try:
            await response.prepare(request)
            for kind, obj in backlog:
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            if initial and query.get("sendInitialEvents") == "true":
                mark = {
                    "kind": rtype.kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {
                        "resourceVersion": bookmark_rv,
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(
                    json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n"
                )
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                kind, obj = item
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._watchers.remove(watcher)
        return response
