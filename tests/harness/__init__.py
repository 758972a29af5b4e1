"""Test harness: a real PostgreSQL, the real Kubernetes control plane with a kubelet stand-in
and a fault proxy, kopf runners."""

from __future__ import annotations

from .cluster import Cluster, ClusterApi
from .control_plane import ControlPlane, ControlPlaneUnavailableError
from .kopf_runner import OperatorProcess, run_kopf
from .kube import ApiError, KubeApi
from .kubelet import Kubelet
from .postgres import PostgresServer, PostgresUnavailableError
from .proxy import FaultProxy, FaultRule, RequestRecord

__all__ = [
    "ApiError",
    "Cluster",
    "ClusterApi",
    "ControlPlane",
    "ControlPlaneUnavailableError",
    "FaultProxy",
    "FaultRule",
    "KubeApi",
    "Kubelet",
    "OperatorProcess",
    "PostgresServer",
    "PostgresUnavailableError",
    "RequestRecord",
    "run_kopf",
]
