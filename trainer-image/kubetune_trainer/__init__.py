"""kubetune's reference PyTorch trainer: a small classifier tuned through ``kubetune.trial``.

Run it as ``python -m kubetune_trainer``; parameters come from ``KUBETUNE_PARAMS`` (set by the
operator or by ``kubetune run``) with command-line flags as defaults and overrides.
"""

from __future__ import annotations

from kubetune_trainer.config import ConfigError, TrainConfig, build_config
from kubetune_trainer.schedule import EarlyStopping, lr_factor
from kubetune_trainer.train import TrainResult, train

__all__ = [
    "ConfigError",
    "EarlyStopping",
    "TrainConfig",
    "TrainResult",
    "build_config",
    "lr_factor",
    "train",
]
