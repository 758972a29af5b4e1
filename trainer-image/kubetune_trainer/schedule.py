"""Learning-rate schedule and early stopping: pure arithmetic, no torch.

The seed articles recommend a linear warm-up (so large early steps do not wreck the first
updates) followed by a decay (cosine annealing or step decay) for fine convergence, and early
stopping on the validation metric to avoid over-fitting and wasted compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCHEDULES = ("cosine", "step", "constant")


def lr_factor(
    progress: float,
    *,
    epochs: int,
    warmup_epochs: float,
    schedule: str,
    step_size: int,
    gamma: float,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at ``progress`` epochs (a float, per batch).

    Warm-up rises linearly from ``1/(steps)`` to 1 over ``warmup_epochs``; then ``cosine``
    anneals to ``min_factor`` at ``epochs``, ``step`` multiplies by ``gamma`` every
    ``step_size`` epochs, ``constant`` stays at 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if warmup_epochs > 0 and progress < warmup_epochs:
        return max(progress / warmup_epochs, 1e-3)
    after = progress - max(warmup_epochs, 0.0)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return float(gamma ** math.floor(after / max(step_size, 1)))
    span = max(epochs - max(warmup_epochs, 0.0), 1e-9)
    t = min(max(after / span, 0.0), 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs without an improvement larger than ``min_delta``.

    ``patience <= 0`` disables it. ``mode`` is ``max`` for accuracy, ``min`` for a loss.
    """

    patience: int
    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    _bad_epochs: int = field(default=0, repr=False)

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's metric; True when training should stop now."""
        improved = self.best is None or (
            value > self.best + self.min_delta
            if self.mode == "max"
            else value < self.best - self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self._bad_epochs = value, epoch, 0
            return False
        self._bad_epochs += 1
        return 0 < self.patience <= self._bad_epochs
