"""kubetune: Kubernetes-native hyperparameter tuning on Optuna."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
