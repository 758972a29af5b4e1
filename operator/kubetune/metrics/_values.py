"""Label values and amounts: the words a label may take, and the checks every value passes
before it reaches prometheus_client.

A metrics call must never break a reconcile: a bad value is dropped and logged with the
field's name instead of raising, and free-form words become ``Other`` so labels stay bounded.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Final

__all__ = [
    "LEDGER_STATES",
    "OUTCOME_STATES",
    "REPORT_ROUTES",
    "amount",
    "camel",
    "label",
    "study_key",
]

logger = logging.getLogger("kubetune.metrics")

#: Trial outcomes counted by ``kubetune_trials_total``.
OUTCOME_STATES: Final = ("COMPLETE", "PRUNED", "FAIL", "RETRIED")
#: States of ``kubetune_study_trials`` (Optuna's states plus RETRIED, the number of retries).
LEDGER_STATES: Final = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "RETRIED")
#: Routes of the report API (docs/architecture.md); anything else is counted as ``other``.
REPORT_ROUTES: Final = ("report", "complete", "fail", "heartbeat", "prune")

_CAMEL_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")
_OTHER: Final = "Other"


def label(value: object, field: str) -> str | None:
    """A namespace/study/objective label value, or None (logged) when it is unusable."""
    if not isinstance(value, str) or not value or len(value) > 253:
        logger.warning("Dropped a metric update with an invalid %s=%r.", field, value)
        return None
    return value


def amount(value: object, field: str) -> float | None:
    """A finite, non-negative float, or None (logged): counters refuse negatives."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        logger.warning("Dropped a metric update with a non-numeric %s=%r.", field, value)
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        logger.warning("Dropped a metric update with %s=%r (need finite and >= 0).", field, value)
        return None
    return number


def camel(value: object) -> str:
    """``value`` when it is one CamelCase word (a reason or condition), else ``Other``."""
    return value if isinstance(value, str) and _CAMEL_WORD.match(value) else _OTHER


def study_key(namespace: str, study: str) -> tuple[str, str] | None:
    """The (namespace, study) labels, or None (logged) when either is unusable."""
    ns, name = label(namespace, "namespace"), label(study, "study")
    return None if ns is None or name is None else (ns, name)
