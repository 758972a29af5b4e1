"""What the chart's RBAC grants, as a set of (apiGroup, resource, verb).

``test_chart_install.py`` compares this set with the API calls the operator really makes when it
runs with the installed chart's ServiceAccount token, so that the chart grants exactly what is
used; a subresource is spelled ``resource/subresource`` (``pods/log``), as in the rules:

    from chart.rbac import rendered_permissions
    assert used_calls == rendered_permissions(set_values=["watch.mode=AllNamespaces"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._helm import Manifest, fetch_helm, template

Permission = tuple[str, str, str]
RBAC_KINDS = frozenset({"Role", "ClusterRole"})


def permissions_of_rules(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    """Expand PolicyRules into (apiGroup, resource, verb) triples ("" is the core group)."""
    granted: set[Permission] = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    granted.add((group, resource, verb))
    return granted


def granted_permissions(manifests: Sequence[Manifest]) -> set[Permission]:
    """Union of what every Role/ClusterRole in ``manifests`` grants."""
    granted: set[Permission] = set()
    for doc in manifests:
        if doc.get("kind") in RBAC_KINDS:
            granted |= permissions_of_rules(doc.get("rules") or [])
    return granted


def rendered_permissions(
    values_files: Sequence[Path] = (), set_values: Sequence[str] = ()
) -> set[Permission]:
    """Render the chart with real helm (default values unless given) and return its grants."""
    return granted_permissions(template(fetch_helm(), values_files, set_values))


__all__ = ["Permission", "granted_permissions", "permissions_of_rules", "rendered_permissions"]
