"""Run the images ``scripts/build-images`` built, with the engine that holds them.

Docker when its daemon answers (``docker info``); otherwise podman, which reads the image store
buildah wrote (``/var/lib/containers``). podman rather than ``buildah run``: it has the flags a
kubelet applies (``--read-only``, ``--user``, ``--tmpfs``, ``--network host``, ``--cap-drop``,
an entrypoint override), the same command line as Docker, and it runs a container from the
image without a working container to create and remove. On machines whose cgroup layout the
default OCI runtime (crun) cannot use, ``--runtime runc`` works, given explicit rlimits no
higher than the caller's own (podman's defaults ask for more than an unprivileged sandbox may
set).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
OPERATOR_IMAGE = f"localhost/kubetune:{VERSION}"
TRAINER_IMAGE = f"localhost/kubetune-trainer:{VERSION}"


class EngineUnavailableError(RuntimeError):
    """Neither a Docker daemon nor podman is available here."""


def _limit(kind: int, wanted: int) -> int:
    _soft, hard = resource.getrlimit(kind)
    return wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: ``docker`` or ``podman``."""

    name: str

    @classmethod
    def detect(cls) -> Engine:
        chosen = os.environ.get("KUBETUNE_TEST_CONTAINER_ENGINE")
        if chosen:
            if shutil.which(chosen) is None:
                raise EngineUnavailableError(f"KUBETUNE_TEST_CONTAINER_ENGINE={chosen} not on PATH")
            return cls(chosen)
        if shutil.which("docker") and _quiet(["docker", "info"]):
            return cls("docker")
        if shutil.which("podman"):
            return cls("podman")
        raise EngineUnavailableError("no container engine: install podman (or run Docker)")

    def run_prefix(self) -> list[str]:
        """``<engine> run --rm`` plus what this engine needs to start a container here."""
        if self.name != "podman":
            return [self.name, "run", "--rm"]
        nofile = _limit(resource.RLIMIT_NOFILE, 4096)
        nproc = _limit(resource.RLIMIT_NPROC, 4096)
        return [
            "podman",
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            f"nproc={nproc}:{nproc}",
        ]

    def has_image(self, image: str) -> bool:
        return _quiet([self.name, "image", "inspect", image])

    def inspect(self, image: str) -> dict[str, Any]:
        done = subprocess.run(
            [self.name, "image", "inspect", image],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        found: list[dict[str, Any]] = json.loads(done.stdout)
        return found[0]

    def command(
        self,
        image: str,
        args: Sequence[str] = (),
        *,
        entrypoint: str | None = None,
        env: Mapping[str, str] | None = None,
        env_file: Path | None = None,
        volumes: Sequence[str] = (),
        read_only: bool = False,
        host_network: bool = False,
        name: str | None = None,
    ) -> list[str]:
        """The full command line that runs ``image`` the way a kubelet would.

        ``read_only``: the root filesystem is read-only and only ``/tmp`` is writable (a tmpfs),
        as in the chart (``readOnlyRootFilesystem`` plus an ``emptyDir`` on ``/tmp``).
        Capabilities are dropped and privilege escalation is off, as in the chart.
        ``env_file``: ``KEY=VALUE`` lines, for values that must not show on a command line.
        """
        cmd = self.run_prefix()
        cmd += ["--cap-drop=ALL", "--security-opt", "no-new-privileges"]
        if name:
            cmd += ["--name", name]
        if read_only:
            cmd += ["--read-only", "--tmpfs", "/tmp"]
            if self.name == "podman":
                cmd.append("--read-only-tmpfs=false")  # /tmp only, not /run and /var/tmp
        if host_network:
            cmd += ["--network", "host"]
        for spec in volumes:
            cmd += ["--volume", spec]
        if env_file is not None:
            cmd += ["--env-file", str(env_file)]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        if entrypoint is not None:
            cmd += ["--entrypoint", entrypoint]
        return [*cmd, image, *args]

    def run(
        self, image: str, args: Sequence[str] = (), *, timeout: float = 300, **options: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr captured, never raises on exit status."""
        return subprocess.run(
            self.command(image, args, **options),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def remove(self, name: str) -> None:
        """Stop and remove a container this suite started by name (gone already: fine)."""
        grace = ["--time", "5"] if self.name == "podman" else []
        subprocess.run(
            [self.name, "rm", "--force", *grace, name],
            capture_output=True,
            check=False,
            timeout=60,
        )


def _quiet(cmd: list[str]) -> bool:
    try:
        done = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def required_engine(*images: str, name: str | None = None) -> Engine:
    """The engine holding ``images``, for a test module to call at import; ``name`` insists on
    one engine (``podman``) instead of detecting it.

    Where the engine or an image is absent the whole module skips with one line saying what to
    build; under CI (``CI`` set) that is a collection error instead, since CI builds the
    images before it runs the tests.
    """
    try:
        if name is not None and shutil.which(name) is None:
            raise EngineUnavailableError(f"{name} is not on PATH")
        engine = Engine(name) if name is not None else Engine.detect()
        missing = [image for image in images if not engine.has_image(image)]
    except EngineUnavailableError as exc:
        message = f"cannot run the images: {exc}"
    else:
        if not missing:
            return engine
        message = f"images not built: {', '.join(missing)} (run scripts/build-images)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI builds the images before the tests", pytrace=False)
    pytest.skip(message, allow_module_level=True)
    raise AssertionError("unreachable")  # pragma: no cover - skip raises
