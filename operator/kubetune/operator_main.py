"""Entry point of ``kubetune operator``: configuration, then kopf with the handlers.

Secrets (storage URL, token key) come from arguments or from the environment
(``KUBETUNE_STORAGE_URL``, ``KUBETUNE_TOKEN_KEY``, ``KUBETUNE_REPORT_URL``), never from
the command line in the chart (it would show in ``ps``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import kopf

import kubetune.handlers  # noqa: F401 - importing it registers the kopf handlers
from kubetune.config import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_REPORT_PORT,
    ConfigError,
    OperatorConfig,
)

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
    metrics_port: int = DEFAULT_METRICS_PORT,
    health_port: int = DEFAULT_HEALTH_PORT,
    report_port: int = DEFAULT_REPORT_PORT,
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
    try:
        config = OperatorConfig.from_env(
            storage_url=storage_url,
            token_key=token_key,
            report_url=report_url,
            metrics_port=metrics_port,
            report_port=report_port,
        )
    except ConfigError as e:
        sys.exit(f"kubetune operator: {e}")
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
