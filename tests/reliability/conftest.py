"""Fixtures for the reliability suite (helpers live in :mod:`reliability.world`).

``KUBETUNE_SOAK=1`` (``scripts/soak``) raises the iteration counts; CI runs the short mode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster
from harness.postgres import PASSWORD
from reliability.world import TOKEN_KEY, World


@pytest.fixture
def world(cluster: Cluster, fresh_database: str, tmp_path: Path) -> Iterator[World]:
    w = World(cluster, fresh_database, tmp_path)
    try:
        yield w
    finally:
        w.stop_operator()
        if os.environ.get("KUBETUNE_RELIABILITY_LOGS"):
            sys.stderr.write(w.logs()[-20000:])


@pytest.fixture
def operator_world(world: World) -> Iterator[World]:
    """A world with the operator already running."""
    world.start_operator()
    yield world


@pytest.fixture
def secrets() -> tuple[str, ...]:
    """What must never leak: the database password and the token key."""
    return (PASSWORD, TOKEN_KEY)
