"""The few Kubernetes calls the operator makes, on the official client (blocking: the shell
runs them in threads). Each answers the errors a reconcile can act on (409 on create, 404 on
delete or patch) and raises the rest."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from kubetune.spec import GROUP, PLURAL, VERSION

__all__ = ["LOG_TAIL_LINES", "KubeApi"]

LOG_TAIL_LINES = 30

logger = logging.getLogger("kubetune.operator")


class KubeApi:
    """The few Kubernetes calls the shell makes (blocking; run them in threads)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._client = api_client
        self._batch = kubernetes.client.BatchV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._exc = kubernetes.client.exceptions.ApiException
        self._warned_logs = False

    @property
    def core(self) -> Any:
        """The CoreV1Api (per-trial Events are written through it: ``event_posting``)."""
        return self._core

    @classmethod
    def from_environment(cls) -> KubeApi:
        import kubernetes

        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            return cls(kubernetes.client.ApiClient(cfg))
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG")
        )
        return cls(client)

    def create_job(self, namespace: str, body: dict[str, Any]) -> str | None:
        """Create the Job; None if it now exists (409 Conflict means it already did).

        Returns the API server's message when it refuses the Job for good (400, 403, 404, 422):
        retrying the same manifest would fail the same way. Other errors raise.
        """
        try:
            self._batch.create_namespaced_job(namespace, body)  # type: ignore[arg-type]
        except self._exc as e:
            if e.status == 409:
                return None
            if e.status in (400, 403, 404, 422):
                return f"the API server refused the Job ({e.status} {e.reason}): {e.body}"[:2000]
            raise
        return None

    def job_exists(self, namespace: str, name: str) -> bool:
        """A direct (quorum) read of the Job: False only on 404; other errors raise."""
        try:
            self._batch.read_namespaced_job(name, namespace)
        except self._exc as e:
            if e.status == 404:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except self._exc as e:
            if e.status != 404:
                raise

    def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        try:
            self._batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})
        except self._exc as e:
            if e.status != 404:  # gone meanwhile: nothing to suspend or resume
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except self._exc as e:
            if e.status != 404:  # deleted meanwhile
                raise

    def pod_log_tail(self, namespace: str, pod: str, container: str | None) -> str | None:
        """The last lines of a trainer's log, for a failed trial's message; None if unreadable.

        A 403 means the operator's role lacks ``pods/log``: said once in the log, since every
        failed trial would hit it and the failure messages lose their most useful part.
        """
        try:
            text = self._core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=LOG_TAIL_LINES
            )
        except self._exc as e:
            if e.status == 403 and not self._warned_logs:
                self._warned_logs = True
                logger.warning(
                    "Cannot read trainer logs (403 on pods/log in %s): failed trials will have "
                    "no log tail; grant get on pods/log to the operator",
                    namespace,
                )
            return None
        except Exception:  # the pod is gone, the kubelet is unreachable: no tail
            return None
        return text if isinstance(text, str) else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
