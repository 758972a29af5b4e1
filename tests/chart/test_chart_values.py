"""Wrong values are refused by values.schema.json (or the templates) with a clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._helm import CHART, HelmError, template


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        (["replicaCount=two"], r"/replicaCount.*got string, want integer"),
        (["replicaCount=3"], r"/replicaCount"),
        (["watch.mode=Everything"], r"/watch/mode.*Namespaces.*AllNamespaces"),
        (["watch.namespaces={Bad_Name}"], r"/watch/namespaces/0"),
        (["image.pullPolicy=Sometimes"], r"/image/pullPolicy"),
        (["serviceMonitor.interval=soon"], r"/serviceMonitor/interval"),
        (["postgresql.persistence.size=lots"], r"/postgresql/persistence/size"),
        (["report.url=ftp://x"], r"/report/url"),
        (["networkPolicy.enabled=yes"], r"/networkPolicy/enabled.*want boolean"),
        (["replicaCont=1"], r"additional properties 'replicaCont' not allowed"),
        (["postgresql.enabled=false"], r"needs an Optuna storage.*storage\.existingSecret"),
        (["serviceAccount.create=false"], r"serviceAccount\.name must name an existing"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_wrong_value_is_rejected_with_a_clear_message(
    helm: Path, set_values: list[str], message: str
) -> None:
    with pytest.raises(HelmError) as err:
        template(helm, set_values=set_values)
    assert re.search(message, str(err.value), re.DOTALL), str(err.value)


def _documented_paths(lines: list[str]) -> dict[str, bool]:
    """Map each dotted key path in values.yaml to whether a `## ` comment precedes it."""
    found: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        found[path] = i > 0 and lines[i - 1].strip().startswith("## ")
    return found


def test_every_value_is_documented_and_typed() -> None:
    """Each key in values.yaml has a `## ` comment right above it and a schema entry."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = _documented_paths((CHART / "values.yaml").read_text().splitlines())
    missing_docs: list[str] = []
    missing_schema: list[str] = []

    def walk(node: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        props = sch.get("properties", {})
        for key, value in node.items():
            where = f"{path}{key}"
            if key not in props:
                missing_schema.append(where)
                continue
            sub = props[key]
            # Kubernetes pass-through objects (securityContext, resources, labels...) are
            # documented as a whole.
            free = sub.get("type") == "object" and "properties" not in sub
            if not documented.get(where, False):
                missing_docs.append(where)
            if isinstance(value, dict) and not free:
                walk(value, sub, where + ".")

    walk(values, schema, "")
    assert not missing_schema, f"not in values.schema.json: {missing_schema}"
    assert not missing_docs, f"no '## ' comment: {missing_docs}"
