"""Exported names are sorted and deliberate (after encode/httpx tests/test_exported_members.py).

For the package root, the pure core and the adapter packages: ``__all__`` lists exactly the
public names a module defines (plus, for a package, what it re-exports from its private
modules), in ruff's isort-style order (RUF022), and every listed name exists. A new public
name therefore needs a deliberate ``__all__`` entry, and a helper meant to stay inside needs a
leading underscore.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

import pytest

import kubetune

CORE = [
    "kubetune._env",
    "kubetune.jobs",
    "kubetune.reasons",
    "kubetune.reconcile",
    "kubetune.reconcile._actions",
    "kubetune.reconcile._budget",
    "kubetune.reconcile._decide",
    "kubetune.reconcile._events",
    "kubetune.reconcile._gpu",
    "kubetune.reconcile._observed",
    "kubetune.reconcile._study",
    "kubetune.reconcile._trials",
    "kubetune.status",
    "kubetune.wakeups",
]
#: Adapter packages whose public face is re-exported from their private modules.
PACKAGES = ["kubetune.metrics"]


def isort_key(name: str) -> tuple[int, list[str | int]]:
    """RUF022's order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; natural within."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    parts = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name) if p]
    return kind, parts


def defined_public_names(module: types.ModuleType) -> set[str]:
    """Public names bound at the top level of the module's source, and what a package
    re-exports from its own private modules."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif (
            isinstance(node, ast.ImportFrom)
            and hasattr(module, "__path__")
            and (node.module or "").startswith(f"{module.__name__}._")
        ):
            names |= {a.asname or a.name for a in node.names}
    return {n for n in names if not n.startswith("_")}


def test_package_root_exports_only_the_version() -> None:
    public = {
        name
        for name, value in vars(kubetune).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # submodules imported by now
        and name != "annotations"  # from __future__
    }
    assert kubetune.__all__ == sorted(public | {"__version__"}) == ["__version__"]


@pytest.mark.parametrize("name", CORE + PACKAGES)
def test_all_is_sorted_and_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key), "sort __all__ (ruff --fix RUF022)"
    assert len(set(exported)) == len(exported)
    assert set(exported) == defined_public_names(module)
    for item in exported:
        assert hasattr(module, item), item


def test_metrics_api_is_what_the_shell_and_tests_use() -> None:
    """The metrics package's face stayed what the single module exported."""
    from kubetune import metrics

    assert metrics.__all__ == [
        "JOB_LAUNCH_BUCKETS",
        "LATENCY_BUCKETS",
        "LEDGER_STATES",
        "OUTCOME_STATES",
        "REPORT_ROUTES",
        "TRIAL_DURATION_BUCKETS",
        "OperatorMetrics",
        "metrics_app",
        "metrics_handler",
        "render",
    ]


def test_reconcile_api_is_what_the_shell_and_ledger_use() -> None:
    """The public face of the decision; the steps stay in its private modules."""
    from kubetune import reconcile

    assert reconcile.__all__ == [
        "AGGREGATED_REASONS",
        "COMBINED_PREFIX",
        "DEFAULT_EVENTS_PER_REASON",
        "DEFAULT_IMAGE_PULL_GRACE_SECONDS",
        "MAX_LOG_TAIL_CHARS",
        "Action",
        "CreateJob",
        "Decision",
        "DeleteJob",
        "EventBudget",
        "EventSpec",
        "ExpectedJob",
        "FoldEvent",
        "Goal",
        "LaunchParked",
        "LaunchTrials",
        "ParkTrials",
        "PostEvent",
        "RecordUsage",
        "RelaunchAttempt",
        "ReleaseParked",
        "SuspendJob",
        "Tell",
        "VerifyJobGone",
        "aggregate_event_name",
        "decide",
        "describe_error",
        "goal_reached",
        "outcome_event",
        "reconcile_backoff",
        "reconcile_error_status",
        "redact",
        "reported_outcome_event",
        "spec_changed",
        "spec_hash",
        "storage_error_status",
    ]
