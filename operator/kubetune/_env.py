"""How parameters become a trial's environment: one rule for the spec (which refuses names that
would collide), the operator and local runner (which set the variables) and the trainer SDK
(which reads them). Standard library only, so the SDK and the pure core can import it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_PARAMS", "ENV_PARAM_PREFIX", "param_env", "param_env_name"]

ENV_PARAM_PREFIX = "KUBETUNE_PARAM_"
#: All parameters at once, as a JSON object with sorted keys.
ENV_PARAMS = "KUBETUNE_PARAMS"
_NOT_ENV = re.compile(r"[^A-Z0-9]")


def param_env_name(name: str) -> str:
    """``KUBETUNE_PARAM_<NAME>``: upper-cased, every character outside [A-Z0-9] as ``_``."""
    return ENV_PARAM_PREFIX + _NOT_ENV.sub("_", name.upper())


def _env_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def param_env(params: Mapping[str, Any]) -> dict[str, str]:
    """The environment a trial sees: one variable per parameter plus all of them as JSON."""
    env = {param_env_name(k): _env_value(v) for k, v in params.items()}
    env[ENV_PARAMS] = json.dumps(dict(params), sort_keys=True)
    return env
