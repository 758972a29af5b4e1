"""Pure helpers of the emulator: selectors, patches, schema pruning, $(VAR) expansion."""

from __future__ import annotations

import pytest

from harness import ApiError
from harness._k8s import (
    expand_vars,
    json_patch,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    prune,
)

LABELS = {"app": "web", "tier": "db"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", True),
        ("app==web,tier=db", True),
        ("app!=web", False),
        ("app in (api, web)", True),
        ("app notin (web)", False),
        ("tier", True),
        ("!tier", False),
        ("missing!=x", True),
        ("", True),
    ],
)
def test_label_selectors(selector: str, expected: bool) -> None:
    assert parse_label_selector(selector)(LABELS) is expected


def test_bad_selectors_are_400() -> None:
    with pytest.raises(ApiError) as exc:
        parse_label_selector("app in web")
    assert exc.value.code == 400
    obj = {"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}}
    assert parse_field_selector("metadata.name=a,status.phase!=Failed")(obj)
    assert not parse_field_selector("metadata.namespace=other")(obj)


def test_merge_and_json_patches() -> None:
    doc = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge_patch(doc, {"a": {"b": None, "c": [3]}, "e": 2}) == {
        "a": {"c": [3]},
        "d": 1,
        "e": 2,
    }
    ops = [
        {"op": "add", "path": "/a/c/-", "value": 3},
        {"op": "remove", "path": "/d"},
        {"op": "replace", "path": "/a/b", "value": 5},
    ]
    assert json_patch(doc, ops) == {"a": {"b": 5, "c": [1, 2, 3]}}
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "test", "path": "/d", "value": 2}])
    assert doc == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # inputs are never mutated


def test_prune_keeps_only_declared_fields() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    obj = {
        "metadata": {"name": "n"},
        "spec": {"x": 1, "y": 2},
        "free": {"k": {"z": 1}},
        "map": {"a": "b"},
        "junk": 1,
    }
    assert prune(obj, schema, root=True) == {
        "metadata": {"name": "n"},
        "spec": {"x": 1},
        "free": {"k": {"z": 1}},
        "map": {"a": "b"},
    }


def test_var_expansion_follows_kubernetes_rules() -> None:
    env = {"LR": "0.1", "N": "3"}
    assert expand_vars("--lr=$(LR) --n $(N)", env) == "--lr=0.1 --n 3"
    assert expand_vars("$$(LR) $(MISSING) $$", env) == "$(LR) $(MISSING) $"
