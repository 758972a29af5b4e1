"""The training loop: warm-up + decay, early stopping, AMP and torch.compile on CUDA only.

Free of the SDK: progress goes to an ``on_epoch`` callback that may ask to stop (pruning), so
the loop is testable without a report server.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kubetune_trainer import model as models
from kubetune_trainer.config import TrainConfig
from kubetune_trainer.data import Data
from kubetune_trainer.schedule import EarlyStopping, lr_factor


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured; ``value`` is the first objective's value at this epoch."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    value: float


@dataclass
class TrainResult:
    """The run's outcome; ``stopped`` is completed | early_stopped | pruned | diverged."""

    best_val_accuracy: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    train_loss: float = math.nan
    epochs_run: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    stopped: str = "completed"
    device: str = "cpu"
    amp: str = "off"
    compiled: bool = False
    history: list[EpochStats] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Training samples per second over the whole run."""
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0

    def objective(self, name: str) -> float:
        """Final value of a named objective (see ``config.OBJECTIVES``)."""
        return {
            "val_accuracy": self.best_val_accuracy,
            "val_loss": self.best_val_loss,
            "train_loss": self.train_loss,
            "train_seconds": self.train_seconds,
            "throughput": self.throughput,
        }[name]


def seed_everything(seed: int, *, deterministic: bool, compiling: bool = False) -> None:
    """Same seed, same run: Python, NumPy and torch RNGs; deterministic kernels on CPU.

    ``torch.use_deterministic_algorithms`` also imports torch._inductor (~3 s, every trial)
    to configure compiled code; without torch.compile the core switch alone does the job.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    core_switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiling or core_switch is None:
        torch.use_deterministic_algorithms(deterministic)
    else:
        core_switch(deterministic, warn_only=False)


def pick_device(cfg: TrainConfig) -> torch.device:
    """CUDA when asked or available (``auto``); CPU otherwise."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def pick_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; never on CPU (clean float32 fallback)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _batches(
    ds: Any, batch_size: int, *, shuffle: bool, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Tensor datasets are sliced directly (far faster than a DataLoader for small data)."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        return
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for xb, yb in loader:
        yield xb.float().to(device), yb.long().to(device)


def _steps_per_epoch(ds: Any, batch_size: int) -> int:
    return max(1, math.ceil(len(ds) / batch_size))


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """sgd (momentum, optional Nesterov), adam or adamw, all with ``weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate(
    net: nn.Module,
    ds: Any,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``ds``."""
    net.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    g = torch.Generator()
    with torch.no_grad():
        for xb, yb in _batches(ds, 1024, shuffle=False, generator=g, device=device):
            with autocast():
                logits = net(xb)
            total_loss += nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
            count += len(yb)
    return float(total_loss) / count, int(correct) / count


def train(
    cfg: TrainConfig,
    data: Data,
    *,
    on_epoch: Callable[[EpochStats], bool] | None = None,
    alive: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainResult:
    """Train ``cfg``'s model on ``data``; ``on_epoch`` returning True stops the run (pruned).

    ``alive`` is called after every optimizer step: the caller turns it into heartbeats, so a
    long epoch is not taken for a hung trainer (``trial.heartbeatTimeoutSeconds``).
    """
    device = pick_device(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    compiled = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    seed_everything(cfg.seed, deterministic=device.type == "cpu", compiling=compiled)
    amp_dtype = pick_amp(cfg, device)
    result = TrainResult(
        device=device.type, amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else "off"
    )

    net: nn.Module = models.build(data.input_shape, data.num_classes, cfg).to(device)
    optimizer = make_optimizer(cfg, net.parameters())
    steps = _steps_per_epoch(data.train, cfg.batch_size)
    step_size = cfg.step_size or max(1, cfg.epochs // 3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step / steps,
            epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs,
            schedule=cfg.schedule,
            step_size=step_size,
            gamma=cfg.gamma,
        ),
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    forward: nn.Module = net
    if compiled:
        forward = torch.compile(net)  # type: ignore[assignment]
        result.compiled = True

    def autocast() -> AbstractContextManager[Any]:
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    monitor = "val_loss" if cfg.objectives[0] == "val_loss" else "val_accuracy"
    stopper = EarlyStopping(
        cfg.patience, mode="min" if monitor == "val_loss" else "max", min_delta=cfg.min_delta
    )
    g = torch.Generator().manual_seed(cfg.seed)
    started = clock()
    for epoch in range(cfg.epochs):
        epoch_start = clock()
        forward.train()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for xb, yb in _batches(
            data.train, cfg.batch_size, shuffle=True, generator=g, device=device
        ):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = nn.functional.cross_entropy(forward(xb).float(), yb)
            if scaler is not None:
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            scheduler.step()
            if alive is not None:
                alive()
            loss_sum += loss.detach() * len(yb)
            seen += len(yb)
        train_loss = float(loss_sum) / max(seen, 1)
        result.samples += seen
        val_loss, val_acc = evaluate(forward, data.val, device, autocast)
        now = clock()
        result.train_seconds = now - started
        result.epochs_run = epoch + 1
        result.train_loss = train_loss
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            result.stopped = "diverged"
            break
        if val_acc > result.best_val_accuracy or result.best_epoch < 0:
            result.best_val_accuracy, result.best_epoch = val_acc, epoch
        result.best_val_loss = min(result.best_val_loss, val_loss)
        partial = TrainResult(
            best_val_accuracy=val_acc,
            best_val_loss=val_loss,
            train_loss=train_loss,
            train_seconds=result.train_seconds,
            samples=result.samples,
        )
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            seconds=now - epoch_start,
            value=partial.objective(cfg.objectives[0]),
        )
        result.history.append(stats)
        if on_epoch is not None and on_epoch(stats):
            result.stopped = "pruned"
            break
        if stopper.update(val_loss if monitor == "val_loss" else val_acc, epoch):
            result.stopped = "early_stopped"
            break
    return result
