"""Fixtures shared by the operator scenarios in this folder."""

from __future__ import annotations

import pytest
from operator_fixtures import operator_env


@pytest.fixture
def operator_env_vars(fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's configuration in this process's environment (kopf in a thread reads it),
    pointing at a fresh database; returns the database URL."""
    for key, value in operator_env(fresh_database).items():
        monkeypatch.setenv(key, value)
    return fresh_database
