"""One emulated cluster for one test: API server + fake kubelet + kubeconfig, started together."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._k8s import JSON
from .apiserver import EmulatedApi
from .kubelet import FakeKubelet, InstantResult

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Cluster:
    api: EmulatedApi
    kubelet: FakeKubelet
    kubeconfig: Path

    @classmethod
    def start(
        cls,
        workdir: Path,
        crds: bool = True,
        instant: Callable[[JSON], InstantResult] | None = None,
        entrypoints: Mapping[str, list[str]] | None = None,
    ) -> Cluster:
        """Start everything; ``crds`` loads every CRD manifest in the repository's ``crds/``."""
        api = EmulatedApi().start()
        if crds:
            for path in sorted((REPO / "crds").glob("*.yaml")):
                api.register_crd(path)
        kubelet = FakeKubelet(api, workdir / "kubelet", instant=instant, entrypoints=entrypoints)
        (workdir / "kubelet").mkdir(parents=True, exist_ok=True)
        kubelet.start()
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig.yaml")
        return cls(api, kubelet, kubeconfig)

    def stop(self) -> None:
        self.kubelet.stop()
        self.api.stop()

    def client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` bound to this cluster (not the global default)."""
        import kubernetes

        return kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
