"""The storage the ledger keeps its books in, and the single-trial reads and writes of the
report API (blocking; Optuna's storage API stays inside ``kubetune.ledger``)."""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna
from optuna.trial import FrozenTrial

__all__ = [
    "find_trial",
    "make_storage",
    "normalise_storage_url",
    "read_trial",
    "write_intermediate",
    "write_user_attr",
]


def normalise_storage_url(url: str, *, have_psycopg3: bool | None = None) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` when psycopg 3 is not installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while kubetune depends on
    psycopg2-binary; a URL naming its driver is left alone. ``have_psycopg3`` defaults to
    whether the ``psycopg`` package is importable.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"postgresql", "postgres"}:
        return url
    if have_psycopg3 is None:
        have_psycopg3 = importlib.util.find_spec("psycopg") is not None
    return url if have_psycopg3 else f"postgresql+psycopg2://{rest}"


def make_storage(
    url: str, *, pool_size: int = 4, max_overflow: int = 4
) -> optuna.storages.BaseStorage:
    """One RDB storage with a small pool (``pool_size + max_overflow`` connections at most).

    A bare ``postgresql://`` URL is pointed at the driver we ship (:func:`normalise_storage_url`).
    """
    url = normalise_storage_url(url)
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        kwargs = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_pre_ping": True,
            "pool_recycle": 300,
            "pool_timeout": 30,
        }
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


# --- One trial by number, for the report API (blocking; Optuna's storage API stays here) ----


def find_trial(study: optuna.Study, number: int) -> tuple[int, FrozenTrial]:
    """The trial's storage id and its stored state; ``KeyError`` when there is no such trial."""
    storage = study._storage
    trial_id = int(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    return trial_id, storage.get_trial(trial_id)


def read_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    return study._storage.get_trial(trial_id)


def write_intermediate(study: optuna.Study, trial_id: int, step: int, value: float) -> None:
    """Store (or replace) the value of ``step``: the latest report of a step wins."""
    study._storage.set_trial_intermediate_value(trial_id, step, value)


def write_user_attr(study: optuna.Study, trial_id: int, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(trial_id, key, value)
