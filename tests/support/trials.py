"""Which of a study's Optuna trials were launched, as the status counts them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["launched"]


def launched(trials: Iterable[Any]) -> list[Any]:
    """The trials that were launched. A trial asked ahead (``budget.askAhead``) is RUNNING
    and parked until a slot frees, or WAITING once released when its study stopped (as is a
    warm start never asked); without a Job ever created, it never ran."""
    return [t for t in trials if not _never_launched(t)]


def _never_launched(t: Any) -> bool:
    if "kubetune:job_created" in t.user_attrs:
        return False
    parked = t.state.name == "RUNNING" and t.user_attrs.get("kubetune:parked") is True
    return parked or t.state.name == "WAITING"
