"""How a parameter name becomes an environment variable: one rule for the spec (which refuses
names that would collide), the operator and local runner (which set the variables) and the
trainer SDK (which reads them). Standard library only, so the SDK can import it."""

from __future__ import annotations

import re

__all__ = ["ENV_PARAM_PREFIX", "param_env_name"]

ENV_PARAM_PREFIX = "KUBETUNE_PARAM_"
_NOT_ENV = re.compile(r"[^A-Z0-9]")


def param_env_name(name: str) -> str:
    """``KUBETUNE_PARAM_<NAME>``: upper-cased, every character outside [A-Z0-9] as ``_``."""
    return ENV_PARAM_PREFIX + _NOT_ENV.sub("_", name.upper())
