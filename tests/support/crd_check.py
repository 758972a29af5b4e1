"""Validates a custom resource the way the API server would: the CRD's structural schema
(with jsonschema) and then every CEL rule (with cel-python) at the node it is attached to."""

from __future__ import annotations

import functools
from typing import Any

import celpy
import jsonschema

from kubetune.crd import open_api_schema


@functools.cache
def _schema() -> dict[str, Any]:
    return open_api_schema()


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(schema: dict[str, Any], data: Any, path: str) -> list[str]:
    errors: list[str] = []
    for v in schema.get("x-kubernetes-validations", []):
        try:
            ok = _program(v["rule"]).evaluate({"self": celpy.json_to_cel(data)})
        except celpy.CELEvalError as e:  # the API server reports these as invalid too
            ok = False
            errors.append(f"{path}: CEL error in {v['rule']!r}: {e}")
            continue
        if not bool(ok):
            errors.append(f"{path}: {v['message']}")
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                errors += _cel_errors(sub, data[key], f"{path}.{key}")
    if isinstance(data, list) and "items" in schema:
        for i, item in enumerate(data):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """Everything the API server would refuse in this manifest (empty when it is accepted)."""
    validator = jsonschema.Draft4Validator(_schema())
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    if errors:
        return errors
    return _cel_errors(_schema(), manifest, "")
