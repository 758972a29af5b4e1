"""Checks a custom resource the way the API server would, without one: the CRD's structural
schema (jsonschema), list-map key uniqueness, and every CEL rule (cel-python, with the
Kubernetes library functions the rules use) at the node it is attached to.

A fast approximation for unit tests; the real kube-apiserver (tests/integration/
test_crd_apiserver.py) is the authority. Known gaps: cel-python sees untyped values (categorical
choices, when.in) that the API server hides from CEL, and it estimates no cost.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

from kubetune.crd import open_api_schema

_UNSET = object()


@functools.cache
def _schema() -> dict[str, Any]:
    return open_api_schema()


def _index_of(items: Any, value: Any) -> celtypes.IntType:
    return celtypes.IntType(next((i for i, x in enumerate(items) if x == value), -1))


#: The Kubernetes CEL library (lists, cel-go's strings extension) as far as the rules use it.
_FUNCTIONS = {
    "indexOf": _index_of,
    "upperAscii": lambda s: celtypes.StringType(s.upper()),
    "replace": lambda s, a, b: celtypes.StringType(s.replace(a, b)),
}


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_FUNCTIONS)


def _rule_errors(rule: dict[str, str], data: Any, old: Any, path: str) -> list[str]:
    transition = "oldSelf" in rule["rule"]
    if transition and old is _UNSET:
        return []  # transition rules run on updates only, when the old value exists too
    where = path + rule.get("fieldPath", "")
    bindings = {"self": celpy.json_to_cel(data)}
    if transition:
        bindings["oldSelf"] = celpy.json_to_cel(old)
    try:
        ok = _program(rule["rule"]).evaluate(bindings)
    except celpy.CELEvalError as e:  # the API server reports these as invalid too
        return [f"{where}: CEL error in {rule['rule']!r}: {e}"]
    return [] if bool(ok) else [f"{where}: {rule['message']}"]


def _map_key_errors(schema: dict[str, Any], data: Any, path: str) -> list[str]:
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(data, list):
        return []
    keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in data]
    dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    return [f"{path}: Duplicate value: {k}" for k in dupes]


def _cel_errors(schema: dict[str, Any], data: Any, path: str, old: Any = _UNSET) -> list[str]:
    errors = _map_key_errors(schema, data, path)
    for rule in schema.get("x-kubernetes-validations", []):
        errors += _rule_errors(rule, data, old, path)
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                was = old.get(key, _UNSET) if isinstance(old, dict) else _UNSET
                errors += _cel_errors(sub, data[key], f"{path}.{key}", was)
    if isinstance(data, list) and "items" in schema:
        # Old list items are correlated by map key only (as the API server does).
        keys = schema.get("x-kubernetes-list-map-keys")
        before = {}
        if keys and isinstance(old, list):
            before = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(data):
            key = tuple(item.get(k) for k in keys) if keys and isinstance(item, dict) else None
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]", before.get(key, _UNSET))
    return errors


def crd_errors(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Everything the API server would refuse in this manifest (empty when it is accepted);
    with ``old``, as an update of that object (transition rules run)."""
    validator = jsonschema.Draft4Validator(_schema())
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    if errors:
        return errors
    return _cel_errors(_schema(), manifest, "", _UNSET if old is None else old)


# --- The API server's own cost estimate, read back from a probe CRD -------------------------

#: kube-apiserver's limit on the estimated cost of all rules of one CRD (apiextensions
#: StaticEstimatedCRDCostLimit); one rule alone may cost at most a tenth of it.
CRD_COST_LIMIT = 100_000_000
RULE_COST_LIMIT = 10_000_000
_FACTOR = re.compile(
    r"estimated rule cost total for entire OpenAPIv3 schema exceeds budget "
    r"by factor of ([0-9.]+)x"
)


def _probe_crd(schema: dict[str, Any], copies: int) -> dict[str, Any]:
    """A CRD whose spec is a map of ``copies`` values of ``schema``: every rule in it then
    counts ``copies`` times (a map keeps transition rules correlatable, a list would not)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "costprobes.probe.kubetune.io"},
        "spec": {
            "group": "probe.kubetune.io",
            "scope": "Namespaced",
            "names": {"kind": "CostProbe", "plural": "costprobes", "singular": "costprobe"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "maxProperties": copies,
                                    "additionalProperties": schema,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def estimated_cost(dry_run_apply: Callable[[dict[str, Any]], str], schema: dict[str, Any]) -> int:
    """The API server's estimated cost of all CEL rules in ``schema`` (rule cost times how
    often it can run), measured by scaling a probe CRD until the server reports by what factor
    it exceeds the limit. ``dry_run_apply`` server-dry-runs a manifest and returns the error
    text ('' when accepted)."""
    copies = 1
    while True:
        answer = dry_run_apply(_probe_crd(schema, copies))
        assert "more than 100x" not in answer, f"one copy already exceeds the budget: {answer}"
        found = _FACTOR.search(answer)
        if found:
            break
        if copies > 10**15:
            return 0  # no rules at all
        copies *= 10
    # Now 1 < factor <= ~10 (one decimal); scale to a factor near 90 for three digits.
    factor = float(found.group(1))
    copies = max(copies, int(copies * 90 / factor))
    found = _FACTOR.search(dry_run_apply(_probe_crd(schema, copies)))
    assert found, "the probe stopped exceeding the budget when scaled up"
    return round(float(found.group(1)) * CRD_COST_LIMIT / copies)
