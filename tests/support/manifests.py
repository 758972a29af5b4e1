"""The one TuningStudy manifest factory of the tests and benchmarks.

Every suite builds its studies here and varies only what its tests are about; the helpers of a
suite (a fake trainer's arguments, a stub's environment) are thin callers that fill in the
container and the trial block. A part left out is left out of the manifest too, so the operator's
defaults apply to it as they would to a user's study.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["DEFAULT_OBJECTIVES", "DEFAULT_SEARCH_SPACE", "study_manifest"]

DEFAULT_OBJECTIVES: list[dict[str, Any]] = [{"name": "val_accuracy", "direction": "maximize"}]
DEFAULT_SEARCH_SPACE: list[dict[str, Any]] = [
    {"name": "lr", "float": {"low": 1.0e-4, "high": 0.1, "log": True}}
]


def study_manifest(
    name: str = "demo",
    *,
    container: dict[str, Any] | None = None,
    namespace: str | None = None,
    objectives: list[dict[str, Any]] | None = None,
    search_space: list[dict[str, Any]] | None = None,
    sampler: dict[str, Any] | None = None,
    pruner: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    trial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TuningStudy as a dict, ready to create, dump or parse.

    Args:
        container: the trial pod's one container (default: ``trainer`` from ``trainer:1``).
        namespace: ``metadata.namespace``; left out when None.
        objectives, search_space: default to one maximised ``val_accuracy`` and one ``lr``.
        sampler, pruner, enqueue: ``spec.sampler``, ``spec.pruner``, ``spec.enqueueTrials``;
            each left out when None.
        budget: ``spec.budget`` as it is (default ``maxTrials: 4, parallelism: 2``).
        trial: the fields of ``spec.trial`` besides its template (``maxRetries``, ``result``,
            ``activeDeadlineSeconds``, ...).
    """
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {
        "objectives": copy.deepcopy(objectives or DEFAULT_OBJECTIVES),
        "searchSpace": copy.deepcopy(search_space or DEFAULT_SEARCH_SPACE),
    }
    for key, part in (("sampler", sampler), ("pruner", pruner)):
        if part is not None:
            spec[key] = part
    spec["budget"] = budget if budget is not None else {"maxTrials": 4, "parallelism": 2}
    if enqueue is not None:
        spec["enqueueTrials"] = enqueue
    pod = {"containers": [container or {"name": "trainer", "image": "trainer:1"}]}
    spec["trial"] = {**(trial or {}), "template": {"spec": pod}}
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": metadata,
        "spec": spec,
    }
