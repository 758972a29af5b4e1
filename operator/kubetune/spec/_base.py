"""Constants, the error type and the base model every part of the API shares."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.alias_generators import to_camel

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TuningStudy"
PLURAL = "tuningstudies"
SINGULAR = "tuningstudy"
SHORT_NAMES = ["ts"]

MAX_PARAMETERS = 64
MAX_CHOICES = 1000
MAX_OBJECTIVES = 8
MAX_ENQUEUED = 100
MAX_MANIFEST_BYTES = 1 << 20
#: Longest parameter or objective name; CEL cost estimates need every string bounded.
MAX_NAME_LENGTH = 63
#: Largest Grid study (points in the product of all grids); Optuna materialises the product.
MAX_GRID_POINTS = 100_000
#: Integers exact in a JSON double and far inside int64, so the API server and CEL agree.
MAX_JSON_INT = 2**53 - 1
#: The Job fields kubetune copies (ttlSecondsAfterFinished) are int32.
MAX_INT32 = 2**31 - 1
#: Bounds of ``trial.heartbeatTimeoutSeconds``: the report API stores a heartbeat at most every
#: few seconds (``kubetune.reporting.HEARTBEAT_WRITE_SECONDS``), and a week is longer than any
#: step worth waiting for.
MIN_HEARTBEAT_TIMEOUT_SECONDS = 15
MAX_HEARTBEAT_TIMEOUT_SECONDS = 7 * 24 * 3600

Scalar = str | int | float | bool
_NAME_RE = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
# A Kubernetes object name (DNS-1123 subdomain) short enough to build Job names from.
OBJECT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SamplerType = Literal["Random", "Grid", "TPE", "CmaEs", "QMC", "GP", "NSGAII"]
PrunerType = Literal[
    "None", "Median", "Percentile", "SuccessiveHalving", "Hyperband", "Patience", "Threshold"
]
ResultSource = Literal["Reporter", "TerminationMessage"]


class SpecError(ValueError):
    """A manifest is not a valid TuningStudy; the message names each bad field."""


Rule = tuple[str, str] | dict[str, str]


def _cel(*rules: Rule, **extra: Any) -> dict[str, Any]:
    """``x-kubernetes-validations`` for a schema node: (rule, message) pairs, or dicts that
    also carry ``fieldPath``/``reason``; ``extra`` adds other schema keywords."""
    out = [r if isinstance(r, dict) else {"rule": r[0], "message": r[1]} for r in rules]
    return {"x-kubernetes-validations": out, **extra}


def _name(description: str) -> Any:
    return Field(pattern=_NAME_RE, max_length=MAX_NAME_LENGTH, description=description)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
    )
