"""The layers point one way (spec -> core -> adapters -> shells), checked by import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run(
        [lint, "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT / "operator",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout


def test_trainer_sdk_imports_only_the_standard_library() -> None:
    code = (
        "import sys, kubetune.trial; "
        "bad = [m for m in ('torch', 'optuna', 'kopf', 'kubernetes', 'pydantic') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "module", ["kubetune.reconcile", "kubetune.jobs", "kubetune.status", "kubetune.spec"]
)
def test_pure_core_imports_no_optuna_kopf_or_kubernetes(module: str) -> None:
    """The reconcile decision runs without Optuna or a cluster client: a fresh interpreter
    that imports the core has none of them loaded (import-linter checks the same statically)."""
    code = (
        f"import sys, {module}; "
        "bad = [m for m in ('optuna', 'kopf', 'kubernetes', 'aiohttp', 'sqlalchemy') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
