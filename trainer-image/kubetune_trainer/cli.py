"""``python -m kubetune_trainer``: params from the SDK, train, report each epoch, complete.

Exit codes: 0 on success and when pruned (the trial is PRUNED, not failed), 2 for a bad
parameter or flag (the trial is failed with the reason), 1 for anything else.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from kubetune import trial as sdk_module
from kubetune_trainer.config import build_config
from kubetune_trainer.data import load
from kubetune_trainer.train import EpochStats, train

#: How often a training loop sends a heartbeat between epoch reports (the smallest
#: ``heartbeatTimeoutSeconds`` is 15 s; the report API stores one per trial per 5 s).
HEARTBEAT_SECONDS = 5.0


def _heartbeats(kt: Any) -> Any:
    """A per-step callback that sends a heartbeat at most every ``HEARTBEAT_SECONDS``."""
    last = time.monotonic()

    def alive() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= HEARTBEAT_SECONDS:
            last = now
            kt.heartbeat()

    return alive


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str] | None = None, sdk: Any = None) -> int:
    """Run one training and hand the result to kubetune.

    ``sdk`` is the ``kubetune.trial`` module by default; tests pass a
    ``kubetune.trial.TrialContext`` bound to their own environment.
    """
    kt = sdk_module if sdk is None else sdk
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, warnings = build_config(args, kt.params())
        for warning in warnings:
            print(warning, file=sys.stderr, flush=True)
        data = load(cfg)
    except ValueError as exc:  # ConfigError, or KUBETUNE_PARAMS that is not JSON
        print(f"kubetune_trainer: {exc}", file=sys.stderr, flush=True)
        kt.fail(f"bad configuration: {exc}")
        return 2
    _say(
        f"Training started: dataset={cfg.dataset} model={cfg.model} optimizer={cfg.optimizer} "
        f"lr={cfg.lr:g} batch_size={cfg.batch_size} weight_decay={cfg.weight_decay:g} "
        f"dropout={cfg.dropout:g} epochs={cfg.epochs} schedule={cfg.schedule} seed={cfg.seed}"
    )

    def on_epoch(stats: EpochStats) -> bool:
        _say(
            f"epoch {stats.epoch + 1}/{cfg.epochs} train_loss={stats.train_loss:.4f} "
            f"val_loss={stats.val_loss:.4f} val_accuracy={stats.val_accuracy:.4f} "
            f"lr={stats.lr:.3g} seconds={stats.seconds:.2f}"
        )
        return bool(kt.report(stats.value, step=stats.epoch))

    result = train(cfg, data, on_epoch=on_epoch, alive=_heartbeats(kt))
    _say(
        f"Training {result.stopped}: best val_accuracy={result.best_val_accuracy:.4f} "
        f"at epoch {result.best_epoch + 1}, epochs={result.epochs_run}, device={result.device}, "
        f"amp={result.amp}, compiled={result.compiled}"
    )
    _say(f"throughput samples/s: {result.throughput:.1f}")
    if result.stopped == "pruned":
        kt.pruned()
        return 0
    values = [result.objective(name) for name in cfg.objectives]
    if not all(math.isfinite(v) for v in values):
        reason = (
            f"objective values are not finite: {dict(zip(cfg.objectives, values, strict=True))}"
        )
        print(f"kubetune_trainer: {reason}", file=sys.stderr, flush=True)
        kt.fail(reason)
        return 1
    kt.complete(values[0] if len(values) == 1 else values)
    return 0
