"""The operator's configuration: one object, parsed in one place.

``kubetune operator`` (flags, which the chart sets) and ``kopf run -m kubetune.handlers`` (the
environment only, as the tests run it) both build it with :meth:`OperatorConfig.from_env`, so
the defaults and the checks exist once. Secrets (storage URL, token key) come from the
environment, never from flags the chart would show in ``ps``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TypeVar

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_REPORT_PORT",
    "ConfigError",
    "OperatorConfig",
]

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_REPORT_PORT = 8082
DEFAULT_RESYNC_SECONDS = 10.0
DEFAULT_IMAGE_PULL_GRACE_SECONDS = 300.0
#: How long a created Job may stay unseen in the index before a direct read checks on it (a
#: trial is relaunched only when that read answers 404: a lagging watch is not a deleted Job).
DEFAULT_EXPECTATION_SECONDS = 60.0
MIN_TOKEN_KEY_BYTES = 16


class ConfigError(ValueError):
    """The operator cannot start with this configuration (the message says what to set)."""


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    storage_url: str
    token_key: bytes
    report_url: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    report_port: int = DEFAULT_REPORT_PORT
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    image_pull_grace_seconds: float = DEFAULT_IMAGE_PULL_GRACE_SECONDS
    expectation_seconds: float = DEFAULT_EXPECTATION_SECONDS
    pool_size: int = 4
    max_overflow: int = 4

    def __repr__(self) -> str:  # never print the storage URL (password) or the key
        return (
            f"OperatorConfig(report_url={self.report_url!r}, metrics_port={self.metrics_port}, "
            f"report_port={self.report_port}, resync_seconds={self.resync_seconds})"
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        storage_url: str | None = None,
        token_key: str | bytes | None = None,
        report_url: str | None = None,
        metrics_port: int | None = None,
        report_port: int | None = None,
    ) -> OperatorConfig:
        """The environment's ``KUBETUNE_*`` settings, overridden by what is given explicitly.

        Raises:
            ConfigError: the storage URL is missing, the token key is shorter than 16 bytes,
                or a number does not parse.
        """
        env = os.environ if env is None else env
        url = storage_url or env.get("KUBETUNE_STORAGE_URL", "")
        key = token_key if token_key is not None else env.get("KUBETUNE_TOKEN_KEY", "")
        key_bytes = key.encode() if isinstance(key, str) else bytes(key)
        if not url:
            raise ConfigError("KUBETUNE_STORAGE_URL is not set (the Optuna storage URL)")
        if len(key_bytes) < MIN_TOKEN_KEY_BYTES:
            raise ConfigError(f"KUBETUNE_TOKEN_KEY must hold at least {MIN_TOKEN_KEY_BYTES} bytes")
        try:
            return cls(
                storage_url=url,
                token_key=key_bytes,
                report_url=report_url or env.get("KUBETUNE_REPORT_URL") or None,
                metrics_port=_pick(
                    metrics_port, env, "KUBETUNE_METRICS_PORT", int, DEFAULT_METRICS_PORT
                ),
                report_port=_pick(
                    report_port, env, "KUBETUNE_REPORT_PORT", int, DEFAULT_REPORT_PORT
                ),
                resync_seconds=_pick(
                    None, env, "KUBETUNE_RESYNC_SECONDS", float, DEFAULT_RESYNC_SECONDS
                ),
                image_pull_grace_seconds=_pick(
                    None,
                    env,
                    "KUBETUNE_IMAGE_PULL_GRACE_SECONDS",
                    float,
                    DEFAULT_IMAGE_PULL_GRACE_SECONDS,
                ),
                expectation_seconds=_pick(
                    None, env, "KUBETUNE_EXPECTATION_SECONDS", float, DEFAULT_EXPECTATION_SECONDS
                ),
            )
        except ValueError as e:
            raise ConfigError(f"a KUBETUNE_* setting is not a number: {e}") from None


N = TypeVar("N", int, float)


def _pick(given: N | None, env: Mapping[str, str], name: str, kind: type[N], default: N) -> N:
    if given is not None:
        return given
    raw = env.get(name, "")
    return kind(raw) if raw else default
