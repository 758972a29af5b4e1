"""The operator's Kubernetes calls (kubetune.kube_client) against the real apiserver: which
answers they absorb (409 on create, 404 on delete), which they turn into a trial failure
(422), and a missing ``pods/log`` grant said once instead of silently losing log tails."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from harness import Cluster
from kubetune.kube_client import KubeApi


def _client(kubeconfig: Path) -> KubeApi:
    return KubeApi(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


def _job(name: str, **spec: Any) -> dict[str, Any]:
    pod = {
        "restartPolicy": "Never",
        "containers": [{"name": "t", "image": "busybox", "command": ["true"]}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": pod}, "suspend": True, **spec},
    }


def test_create_and_delete_absorb_conflict_and_not_found(cluster: Cluster) -> None:
    api = _client(cluster.kubeconfig)
    assert api.create_job("default", _job("kc-a")) is None
    assert api.create_job("default", _job("kc-a")) is None  # 409: it already exists
    refused = api.create_job("default", _job("kc-b", backoffLimit=-1))
    assert refused is not None and "422" in refused and "backoffLimit" in refused
    api.suspend_job("default", "kc-a", False)
    assert cluster.api.get("jobs", "kc-a", "default")["spec"]["suspend"] is False
    api.delete_job("default", "kc-a")
    api.delete_job("default", "kc-a")  # gone already (or going): no error
    api.suspend_job("default", "nobody", True)  # 404: nothing to suspend
    api.close()


def test_a_missing_pods_log_grant_is_said_once(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kubectl = cluster.plane.kubectl
    kubectl("create", "serviceaccount", "no-logs", "-n", "default")
    kubectl("create", "role", "no-logs", "--verb=get,list", "--resource=pods", "-n", "default")
    kubectl(
        "create",
        "rolebinding",
        "no-logs",
        "--role=no-logs",
        "--serviceaccount=default:no-logs",
        "-n",
        "default",
    )
    api = _client(cluster.token_kubeconfig(tmp_path / "kc", "default", "no-logs"))
    with caplog.at_level(logging.WARNING, logger="kubetune.operator"):
        assert api.pod_log_tail("default", "some-trial-pod", "trainer") is None
        assert api.pod_log_tail("default", "other-trial-pod", "trainer") is None
    warnings = [r.getMessage() for r in caplog.records if "pods/log" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "403" in warnings[0]
    api.close()
