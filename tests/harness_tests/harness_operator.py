"""A tiny kopf operator used only to prove the emulated API works with real kopf."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.loggers = True  # kopf posts Events only with this on
    settings.watching.server_timeout = 30


@kopf.on.create("kubetune.io", "v1alpha1", "tuningstudies")
def created(spec: kopf.Spec, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    patch.status["observedTrials"] = int(spec.get("maxTrials", 0))
    patch.status["phase"] = "Seen"
    logger.info("Saw the study.")


@kopf.on.update("kubetune.io", "v1alpha1", "tuningstudies", field="spec.maxTrials")
def updated(new: Any, patch: kopf.Patch, **_: Any) -> None:
    patch.status["observedTrials"] = int(new)


@kopf.on.delete("kubetune.io", "v1alpha1", "tuningstudies")
def deleted(**_: Any) -> None:
    """Present so that kopf puts a finalizer on studies and must remove it on deletion."""
