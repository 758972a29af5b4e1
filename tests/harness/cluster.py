"""The real cluster the operator tests run on: control plane + kubelet stand-in + fault proxy.

One per test session (the control plane takes seconds to start); each test gets a clean
``default`` namespace (everything the previous test made is deleted) and a fresh proxy log and
fault list. The operator under test talks through the proxy (``cluster.kubeconfig``); the test's
own reads go straight to the apiserver (``cluster.api``), so injected faults never hit them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .control_plane import ControlPlane
from .kube import ApiError, KubeApi
from .kubelet import Kubelet
from .proxy import FaultProxy, RequestRecord, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
#: Namespaces a test may not delete: the cluster's own.
SYSTEM_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


class ClusterApi(KubeApi):
    """The test's admin client, plus the proxy's fault and request-log controls."""

    proxy: FaultProxy

    @property
    def faults(self) -> Any:
        return self.proxy.faults

    @property
    def requests(self) -> list[RequestRecord]:
        return self.proxy.requests

    def requests_for(
        self, resource: str | None = None, verb: str | None = None
    ) -> list[RequestRecord]:
        """What the operator asked the apiserver for (through the proxy) in this test."""
        return self.proxy.requests_for(resource, verb)

    def drop_watches(self) -> None:
        self.proxy.drop_watches()


@dataclasses.dataclass(frozen=True)
class Seen:
    """One watch event the recorder saw: ``key`` is ``jobs.batch``, ``pods``, ..."""

    key: str
    type: str
    obj: dict[str, Any]


class Recorder:
    """Every object of a few kinds the apiserver stored while a test ran, deleted ones too
    (a real server keeps no history a test can read, so the tests keep their own)."""

    KINDS = {
        "jobs": "jobs.batch",
        "pods": "pods",
        "tuningstudies": "tuningstudies.kubetune.io",
        "events": "events",
        "secrets": "secrets",
        "configmaps": "configmaps",
    }

    def __init__(self, api: KubeApi) -> None:
        self.seen: list[Seen] = []
        for kind, key in self.KINDS.items():
            api.add_listener(
                lambda _k, t, obj, _o, key=key: self.seen.append(Seen(key, t, obj)), kind
            )

    def clear(self) -> None:
        self.seen = []


@dataclasses.dataclass
class Cluster:
    plane: ControlPlane
    api: ClusterApi
    kubelet: Kubelet
    proxy: FaultProxy
    kubeconfig: Path
    recorder: Recorder

    @classmethod
    def start(cls, plane: ControlPlane, workdir: Path) -> Cluster:
        api = ClusterApi(plane.kubeconfig)
        install_crds(plane)
        proxy = FaultProxy(api.server, api.ca_file, api.cert).start()
        api.proxy = proxy
        kubelet = Kubelet(api, workdir / "kubelet", plane.folder / "pki").start()
        kubeconfig = write_kubeconfig(workdir / "kubeconfig.yaml", proxy.url)
        return cls(plane, api, kubelet, proxy, kubeconfig, Recorder(KubeApi(plane.kubeconfig)))

    @property
    def history(self) -> list[Seen]:
        """What the apiserver stored during this test, in the order the watches saw it."""
        return list(self.recorder.seen)

    def stop(self) -> None:
        self.kubelet.stop()
        self.proxy.stop()
        self.api.close()

    def client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` through the proxy (not the global default)."""
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def token_kubeconfig(self, path: Path, namespace: str, service_account: str) -> Path:
        """A kubeconfig that acts as ``namespace/service_account`` (a real token) via the proxy."""
        token = self.plane.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration=2h"
        ).strip()
        return write_kubeconfig(path, self.proxy.url, token=token)

    def describe(self, ns: str = "default") -> str:
        """A short account of the namespace (studies, Jobs, pods), printed when a test fails."""
        lines = []
        for study in self.api.list("tuningstudies", ns):
            st = study.get("status") or {}
            conds = {
                c["type"]: f"{c['status']}/{c.get('reason')}" for c in st.get("conditions") or []
            }
            lines.append(
                f"study {study['metadata']['name']}: state={st.get('state')} "
                f"trials={st.get('trials')} conditions={conds}"
            )
        for job in self.api.list("jobs", ns):
            st = job.get("status") or {}
            conds = [c["type"] for c in st.get("conditions") or [] if c["status"] == "True"]
            lines.append(
                f"job {job['metadata']['name']}: active={st.get('active')} "
                f"succeeded={st.get('succeeded')} failed={st.get('failed')} {conds}"
            )
        for pod in self.api.list("pods", ns):
            st = pod.get("status") or {}
            states = [
                list((c.get("state") or {}).keys()) for c in st.get("containerStatuses") or []
            ]
            lines.append(
                f"pod {pod['metadata']['name']}: node={pod['spec'].get('nodeName')} "
                f"phase={st.get('phase')} {states}"
            )
        return "\n".join(lines)

    @contextlib.contextmanager
    def lax_crd(self) -> Iterator[None]:
        """Serve TuningStudies with no schema checks (an apiserver whose CRD predates ours, or
        objects stored before a rule existed): whatever reaches the operator must not crash it.
        The repository's CRD is applied again afterwards."""
        crd = yaml.safe_load((REPO / "crds" / "kubetune.io_tuningstudies.yaml").read_text())
        for version in crd["spec"]["versions"]:
            props = version["schema"]["openAPIV3Schema"]["properties"]
            props["spec"] = {"x-kubernetes-preserve-unknown-fields": True}  # any JSON at all
        self.plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd)
        )
        try:
            yield
        finally:
            # Objects stored under the lax schema may break the real one, and then even a
            # finalizer removal is refused: clear them out while the lax schema still holds.
            for ns in self.api.list("namespaces"):
                self._delete_studies(ns["metadata"]["name"])
            install_crds(self.plane)

    # ---- between tests ----------------------------------------------------------------------

    def reset(self) -> None:
        """Delete what the last test made, so the next one starts from a clean world."""
        self.proxy.faults.clear()
        self.proxy.requests.clear()
        self.proxy.bodies.clear()
        self.proxy.clear_gone()
        self.kubelet.reset()
        for ns in self.api.list("namespaces"):
            name = ns["metadata"]["name"]
            if name not in SYSTEM_NAMESPACES and not name.startswith("kube-"):
                self._empty(name)
                with contextlib.suppress(ApiError):
                    self.api.delete("namespaces", name)
        self._empty("default")
        self.recorder.clear()

    def _delete_studies(self, ns: str) -> None:
        for study in self.api.list("tuningstudies", ns):
            name = study["metadata"]["name"]
            with contextlib.suppress(ApiError):
                self.api.patch("tuningstudies", name, {"metadata": {"finalizers": None}}, ns)
            with contextlib.suppress(ApiError):
                self.api.delete("tuningstudies", name, ns)

    def _empty(self, ns: str) -> None:
        self._delete_studies(ns)
        for job in self.api.list("jobs", ns):
            with contextlib.suppress(ApiError):
                self.api.delete("jobs", job["metadata"]["name"], ns, propagation="Background")
        deadline = time.monotonic() + 300  # generous: only a broken cluster takes this long
        while pods := self.api.list("pods", ns):
            if time.monotonic() > deadline:
                names = [p["metadata"]["name"] for p in pods]
                raise RuntimeError(f"pods in {ns} outlived 300 s of deletion: {names}")
            for pod in pods:
                with contextlib.suppress(ApiError):
                    if pod["metadata"].get("finalizers"):
                        self.api.patch(
                            "pods", pod["metadata"]["name"], {"metadata": {"finalizers": None}}, ns
                        )
                    self.api.delete("pods", pod["metadata"]["name"], ns, grace_seconds=0)
            time.sleep(0.2)
        for kind in ("events", "secrets", "configmaps"):
            for obj in self.api.list(kind, ns):
                if kind == "configmaps" and obj["metadata"]["name"] == "kube-root-ca.crt":
                    continue
                with contextlib.suppress(ApiError):
                    self.api.delete(kind, obj["metadata"]["name"], ns)


def install_crds(plane: ControlPlane, folder: Path | None = None) -> None:
    """Apply the repository's CRDs for real and wait until they are Established."""
    folder = folder or REPO / "crds"
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=300s", "crd", "--all")
