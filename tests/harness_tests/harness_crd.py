"""A small CRD for the harness tests, independent of the evolving product CRD."""

from __future__ import annotations

from typing import Any


def study_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "tuningstudies.kubetune.io"},
        "spec": {
            "group": "kubetune.io",
            "scope": "Namespaced",
            "names": {
                "plural": "tuningstudies",
                "singular": "tuningstudy",
                "kind": "TuningStudy",
                "shortNames": ["ts"],
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["maxTrials"],
                                    "properties": {
                                        "maxTrials": {"type": "integer", "minimum": 1},
                                        "parallelism": {"type": "integer", "default": 1},
                                        "note": {"type": "string", "nullable": True},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "phase": {"type": "string"},
                                        "observedTrials": {"type": "integer"},
                                    },
                                    "x-kubernetes-preserve-unknown-fields": False,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def study(name: str, max_trials: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "spec": {"maxTrials": max_trials, **spec},
    }
