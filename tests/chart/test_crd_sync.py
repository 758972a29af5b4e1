"""The chart's crds/ is an exact copy of the generated top-level crds/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ._helm import CHART, REPO_ROOT

TOP_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART / "crds"


def _yaml_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


def test_chart_crds_equal_top_level_crds() -> None:
    top = _yaml_files(TOP_CRDS)
    if not top:
        pytest.skip("crds/ has no generated CRD yet (kubetune crd writes it)")
    chart = _yaml_files(CHART_CRDS)
    assert sorted(chart) == sorted(top), "run scripts/sync-crds.sh"
    stale = [name for name in top if chart[name] != top[name]]
    assert not stale, f"out of sync: {stale}; run scripts/sync-crds.sh"


def test_sync_script_check_mode_agrees() -> None:
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "sync-crds.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    in_sync = _yaml_files(TOP_CRDS) == _yaml_files(CHART_CRDS)
    assert (done.returncode == 0) == in_sync, done.stderr


def test_chart_crds_are_valid_kubernetes() -> None:
    files = sorted(CHART_CRDS.glob("*.yaml"))
    if not files:
        pytest.skip("no CRD in the chart yet")
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] == "CustomResourceDefinition"
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), True)
