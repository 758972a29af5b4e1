"""Generates the TuningStudy CustomResourceDefinition from the spec model.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema. The
conversion inlines ``$ref``s, turns ``Optional[X]`` into ``X`` (absent fields are simply
omitted), rewrites numeric ``exclusiveMinimum`` into the v3.0 boolean form, moves defaults
into descriptions (the operator applies them, so stored objects stay as the user wrote them),
and keeps ``x-kubernetes-*`` extensions (CEL rules, preserve-unknown-fields) from the model.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune import spec as s

__all__ = ["crd_manifest", "crd_yaml", "open_api_schema"]

_DROP = {"title", "additionalProperties", "default", "$defs", "uniqueItems"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            target.update(rest)
            return _inline(target, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _is_scalar_union(options: list[dict[str, Any]]) -> bool:
    return all(o.get("type") in {"string", "integer", "number", "boolean"} for o in options)


def _value_only(options: list[dict[str, Any]]) -> bool:
    """A oneOf/anyOf of bare value validations (``required`` ...), which a structural schema
    allows, as opposed to a pydantic union of types, which it does not."""
    typed = {"type", "$ref", "properties", "items", "enum", "const"}
    return all(not typed & set(o) for o in options)


def _convert(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        if key in node and not _value_only(node[key]):
            options = [o for o in node.pop(key) if o.get("type") != "null"]
            if len(options) == 1:
                merged = dict(options[0])
                merged.update(node)
                node = merged
            elif _is_scalar_union(options):
                node["x-kubernetes-preserve-unknown-fields"] = True
            else:  # pragma: no cover - the model has no such unions
                raise ValueError(f"cannot express union {options} structurally")
    default = node.get("default")
    desc = node.get("description")
    if default is not None and not isinstance(default, dict | list):
        shown = "true" if default is True else "false" if default is False else default
        desc = f"{desc or ''} Defaults to {shown}.".strip()
    if desc:
        node["description"] = " ".join(desc.split())
    if "exclusiveMinimum" in node:
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("type") == "string" and "enum" in node and "maxLength" not in node:
        # Bounds the string for CEL's cost estimate, which ignores enum.
        node["maxLength"] = max(len(str(v)) for v in node["enum"])
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        pass  # an open leaf: any JSON value, the model checks it
    if (
        node.get("type") == "object"
        and "properties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
            node["additionalProperties"] = _convert(node["additionalProperties"])
            add = node.pop("additionalProperties")
            node = {k: v for k, v in node.items() if k not in _DROP}
            node["additionalProperties"] = add
            return node
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in node:
        node["properties"] = {k: _convert(v) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = _convert(node["items"])
    return {k: v for k, v in node.items() if k not in _DROP}


def open_api_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema for a TuningStudy (spec and status)."""
    raw_spec = s.TuningStudySpec.model_json_schema(by_alias=True, mode="validation")
    raw_status = s.TuningStudyStatus.model_json_schema(by_alias=True, mode="serialization")
    spec_schema = _convert(_inline(raw_spec, raw_spec.get("$defs", {})))
    status_schema = _convert(_inline(raw_status, raw_status.get("$defs", {})))
    return {
        "type": "object",
        "description": (s.TuningStudy.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": 253,
                        "pattern": s.OBJECT_NAME_RE.pattern,
                    }
                },
            },
            "spec": spec_schema,
            "status": status_schema,
        },
    }


def _column(name: str, kind: str, path: str, description: str = "", **extra: Any) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if description:
        col["description"] = description
    return {**col, **extra}


#: What ``kubectl get tuningstudies`` shows (``-o wide`` adds priority 1).
PRINTER_COLUMNS = [
    _column("State", "string", ".status.state"),
    _column("Trials", "string", ".status.progress", "Finished trials / maxTrials"),
    _column("Running", "integer", ".status.trials.running"),
    _column("Pruned", "integer", ".status.trials.pruned", priority=1),
    _column("Failed", "integer", ".status.trials.failed", priority=1),
    _column("Best", "string", ".status.bestValue"),
    _column(
        "Reason",
        "string",
        '.status.conditions[?(@.type=="Ready")].reason',
        "Why the study is in its state, e.g. GoalReached",
    ),
    _column("Age", "date", ".metadata.creationTimestamp"),
]


def crd_manifest() -> dict[str, Any]:
    version = {
        "name": s.VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": PRINTER_COLUMNS,
        "schema": {"openAPIV3Schema": open_api_schema()},
    }
    names = {
        "kind": s.KIND,
        "listKind": f"{s.KIND}List",
        "plural": s.PLURAL,
        "singular": s.SINGULAR,
        "shortNames": list(s.SHORT_NAMES),
        "categories": ["kubetune"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{s.PLURAL}.{s.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {"group": s.GROUP, "scope": "Namespaced", "names": names, "versions": [version]},
    }


def crd_yaml() -> str:
    header = "# Generated by `kubetune crd` from kubetune.spec. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)
