"""Entry point of ``kubetune operator``: configuration, then kopf with the handlers.

Secrets (storage URL, token key) come from arguments or from the environment
(``KUBETUNE_STORAGE_URL``, ``KUBETUNE_TOKEN_KEY``, ``KUBETUNE_REPORT_URL``), never from
the command line in the chart (it would show in ``ps``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import kopf

from kubetune.handlers import OperatorConfig

__all__ = ["run_operator", "scanning_disabled"]

#: A namespace name (an RFC 1123 label), as opposed to a kopf pattern (globs, ``!``, commas).
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def scanning_disabled(namespaces: Sequence[str], *, clusterwide: bool) -> bool:
    """Whether kopf may skip observing the cluster: true when only named namespaces are served.

    kopf lists and watches Namespaces (to match patterns) and CRDs (to notice new versions) unless
    told not to. Explicit names need neither, and with the chart's namespaced Roles the Namespace
    list is forbidden: kopf retries it for about a minute before it serves anything. Cluster-wide,
    kopf lists no Namespaces and keeps watching CRDs, which the chart's ClusterRole grants.
    """
    return (
        not clusterwide
        and bool(namespaces)
        and all(_NAMESPACE_NAME.fullmatch(ns) for ns in namespaces)
    )


def run_operator(
    *,
    namespaces: list[str] | None = None,
    all_namespaces: bool = False,
    storage_url: str | None = None,
    token_key: str | bytes | None = None,
    report_url: str | None = None,
    metrics_port: int = 8080,
    health_port: int = 8081,
    report_port: int = 8082,
    log_format: str = "text",
) -> None:
    """Run the operator until SIGTERM; ``/healthz`` on ``health_port`` is kopf's liveness.

    ``log_format`` is ``text`` (key=value sentences) or ``json`` (one object a line, for log
    pipelines); both come from kopf's own formatter so kopf's lines and ours look alike.
    """
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    url = storage_url or os.environ.get("KUBETUNE_STORAGE_URL", "")
    key = token_key if token_key is not None else os.environ.get("KUBETUNE_TOKEN_KEY", "")
    key_bytes = key.encode() if isinstance(key, str) else bytes(key)
    if not url:
        sys.exit("kubetune operator: KUBETUNE_STORAGE_URL is not set (the Optuna storage URL)")
    if len(key_bytes) < 16:
        sys.exit("kubetune operator: KUBETUNE_TOKEN_KEY must hold at least 16 bytes")
    config = OperatorConfig(
        storage_url=url,
        token_key=key_bytes,
        report_url=report_url or os.environ.get("KUBETUNE_REPORT_URL") or None,
        metrics_port=metrics_port,
        report_port=report_port,
        resync_seconds=float(os.environ.get("KUBETUNE_RESYNC_SECONDS", "10")),
        image_pull_grace_seconds=float(os.environ.get("KUBETUNE_IMAGE_PULL_GRACE_SECONDS", "300")),
    )
    clusterwide = all_namespaces or not namespaces
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = scanning_disabled(namespaces or (), clusterwide=clusterwide)
    kopf.run(
        settings=settings,
        standalone=True,
        clusterwide=clusterwide,
        namespaces=() if clusterwide else tuple(namespaces or ()),
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        memo=kopf.Memo(config=config),
    )
