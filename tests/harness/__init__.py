"""Test harness: a real PostgreSQL, an emulated Kubernetes API, a fake kubelet, kopf runners."""

from __future__ import annotations

from .apiserver import ApiError, EmulatedApi, FaultRule, RequestRecord, ResourceType
from .cluster import Cluster
from .kopf_runner import OperatorProcess, run_kopf
from .kubelet import FakeKubelet
from .postgres import PostgresServer, PostgresUnavailableError

__all__ = [
    "ApiError",
    "Cluster",
    "EmulatedApi",
    "FakeKubelet",
    "FaultRule",
    "OperatorProcess",
    "PostgresServer",
    "PostgresUnavailableError",
    "RequestRecord",
    "ResourceType",
    "run_kopf",
]
