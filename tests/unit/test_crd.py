"""The committed CRD is exactly what the spec model generates, and it is structural."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubetune.crd import crd_manifest, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "kubetune.io_tuningstudies.yaml"


def test_committed_crd_is_up_to_date() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ is stale: run `kubetune crd` and commit the result"
    )


def _walk(node: dict[str, Any], path: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    out.append((path, node))
    for key, sub in node.get("properties", {}).items():
        _walk(sub, f"{path}.{key}", out)
    if "items" in node:
        _walk(node["items"], f"{path}[]", out)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", out)


def _schema() -> dict[str, Any]:
    crd = crd_manifest()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(_schema(), "", nodes)
    for path, node in nodes:
        open_leaf = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or open_leaf, f"{path} has no type"
        for forbidden in ("allOf", "$ref", "additionalProperties: false", "uniqueItems", "default"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        for union in ("anyOf", "oneOf"):
            # Allowed only as bare value validations (e.g. "either in or atLeast/atMost").
            assert "type" not in json.dumps(node.get(union, [])), f"{path} has a typed {union}"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
    opens = {p for p, n in nodes if n.get("x-kubernetes-preserve-unknown-fields")}
    # Only leaves that must take any value are open: the pod template, warm-start values,
    # and categorical choices (mixed scalar types).
    assert opens == {
        ".spec.trial.template",
        ".spec.enqueueTrials[]",
        ".spec.searchSpace[].categorical.choices[]",
        ".spec.searchSpace[].when.in[]",
    }


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(_schema()["properties"]["spec"], ".spec", nodes)
    missing = [p for p, n in nodes if not n.get("description") and not p.endswith("[]")]
    assert missing == []


def test_status_is_declared_with_the_fields_the_operator_writes() -> None:
    status = _schema()["properties"]["status"]["properties"]
    assert {
        "observedGeneration",
        "state",
        "conditions",
        "trials",
        "bestTrial",
        "paretoFront",
        "gpuSeconds",
        "startTime",
        "completionTime",
        "optunaStudyName",
        "progress",
        "bestValue",
    } <= set(status)
    cond = status["conditions"]["items"]["properties"]
    assert {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    } <= set(cond)
    assert set(status["trials"]["properties"]) == {
        "total",
        "running",
        "completed",
        "pruned",
        "failed",
        "retried",
    }


def test_crd_shape() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "tuningstudies.kubetune.io"
    assert crd["spec"]["names"]["shortNames"] == ["ts"]
    assert "kubetune" in crd["spec"]["names"]["categories"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"State", "Trials", "Running", "Best", "Age"} <= columns
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for named in ("searchSpace", "objectives"):  # unique names, enforced by the server
        assert spec[named]["x-kubernetes-list-type"] == "map"
        assert spec[named]["x-kubernetes-list-map-keys"] == ["name"]


def test_everything_cel_can_reach_is_bounded() -> None:
    """The API server estimates a rule's cost from maxLength/maxItems/maxProperties; an
    unbounded string or list under a rule counts as 3 MiB long and blows the budget."""
    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(_schema()["properties"]["spec"], ".spec", nodes)
    for path, node in nodes:
        if node.get("type") == "string":
            assert "maxLength" in node, f"{path} has no maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} has no maxProperties"


def test_immutable_fields_have_transition_rules() -> None:
    spec = _schema()["properties"]["spec"]
    transition = {
        r.get("fieldPath", "") for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]
    }
    assert transition == {".sampler", ".pruner", ".trial"}
    for named in ("searchSpace", "objectives"):
        rules = spec["properties"][named]["x-kubernetes-validations"]
        assert {"rule": "self == oldSelf"}.items() <= rules[-1].items()
        assert rules[-1]["reason"] == "FieldValueForbidden"
    mutable = ("budget", "suspend", "enqueueTrials")
    assert not any("oldSelf" in json.dumps(spec["properties"][m]) for m in mutable), (
        "budget, parallelism, suspend and warm starts stay editable"
    )
