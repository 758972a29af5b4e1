"""Pure helpers shared by the emulated API server and the fake kubelet: no I/O, no threads."""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

JSON = dict[str, Any]


class ApiError(Exception):
    """An API failure answered as a Kubernetes ``Status`` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- patches -------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches of our objects)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # strategic-merge directives: not supported, ignored
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON patch path must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test, copy, move."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "JSON patch body must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind = op["op"]
            parts = _pointer(op["path"])
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']}")
                continue
            if kind in ("copy", "move"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if kind == "move":
                    parent = _walk(doc, src[:-1])
                    del parent[int(src[-1]) if isinstance(parent, list) else src[-1]]
                kind, op = "add", {**op, "value": value}  # noqa: PLW2901
            if not parts:
                doc = copy.deepcopy(op["value"])
                continue
            parent = _walk(doc, parts[:-1])
            last = parts[-1]
            if isinstance(parent, list):
                if kind == "add":
                    index = len(parent) if last == "-" else int(last)
                    parent.insert(index, copy.deepcopy(op["value"]))
                elif kind == "remove":
                    del parent[int(last)]
                elif kind == "replace":
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
            elif kind in ("add", "replace"):
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"JSON patch replace of missing {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {op!r} cannot apply: {exc!r}") from exc
    return doc


# --- selectors -----------------------------------------------------------------------------

Predicate = Callable[[Mapping[str, str]], bool]


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_CMP_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)$")
_EXISTS_RE = re.compile(r"^(!?)\s*([A-Za-z0-9_./-]+)$")


def _requirement_holds(
    labels: Mapping[str, str], key: str, op: str, values: frozenset[str]
) -> bool:
    if op == "in":
        return labels.get(key) in values
    if op == "notin":
        return labels.get(key) not in values
    if op == "exists":
        return key in labels
    if op == "!exists":
        return key not in labels
    if op == "!=":
        return labels.get(key) not in values
    return labels.get(key) in values  # = and ==


def parse_label_selector(text: str | None) -> Predicate:
    """``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``."""
    requirements: list[tuple[str, str, frozenset[str]]] = []
    for term in _split_top(text or ""):
        if m := _SET_RE.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(","))
            requirements.append((m.group(1), m.group(2), values))
        elif m := _CMP_RE.match(term):
            requirements.append((m.group(1), m.group(2), frozenset([m.group(3)])))
        elif m := _EXISTS_RE.match(term):
            requirements.append((m.group(2), "!exists" if m.group(1) else "exists", frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(_requirement_holds(labels, *req) for req in requirements)


def parse_field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """``path.to.field=value`` and ``!=`` over dotted paths like ``metadata.name``."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_top(text or ""):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = m.group(1).split("."), m.group(2), m.group(3)

        def check(obj: Mapping[str, Any], p: list[str] = path, o: str = op, v: str = value) -> bool:
            cur: Any = obj
            for part in p:
                cur = cur.get(part) if isinstance(cur, Mapping) else None
            text = "" if cur is None else str(cur)
            return (text == v) if o != "!=" else (text != v)

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# --- structural schemas (CRDs) -------------------------------------------------------------


def prune(value: Any, schema: Mapping[str, Any] | None, root: bool = False) -> Any:
    """Drop fields a structural schema does not declare, as the real API server does."""
    if schema is None:
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = root or bool(schema.get("x-kubernetes-embedded-resource"))
        out: JSON = {}
        for key, item in value.items():
            if embedded and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif props is not None and key in props:
                out[key] = prune(item, props[key])
            elif isinstance(additional, dict):
                out[key] = prune(item, additional)
            elif additional is True or preserve:
                out[key] = item
        return out
    if isinstance(value, list):
        items = schema.get("items")
        return [prune(v, items if isinstance(items, dict) else None) for v in value]
    return value


def apply_defaults(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Fill ``default`` values of absent properties inside present objects."""
    if schema is None:
        return value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in value:
                value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def to_jsonschema(schema: Any) -> Any:
    """OpenAPI v3.0 (Kubernetes flavour) -> JSON Schema draft 4 for ``jsonschema``."""
    if isinstance(schema, list):
        return [to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: JSON = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("format", "default", "description"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key == "nullable":
            continue
        else:
            out[key] = to_jsonschema(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Human-readable validation errors, ``field.path: message``, metadata not checked."""
    import jsonschema  # type: ignore[import-untyped]

    checked = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
    validator = jsonschema.Draft4Validator(to_jsonschema(schema))
    errors = []
    for err in sorted(validator.iter_errors(checked), key=lambda e: list(map(str, e.path))):
        path = ".".join(str(p) for p in err.path) or "<root>"
        errors.append(f"{path}: Invalid value: {err.message}")
    return errors


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, unknown names stay as they are."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, text)
