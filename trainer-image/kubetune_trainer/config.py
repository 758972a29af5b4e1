"""The trainer's configuration: defaults < ``KUBETUNE_PARAMS`` < explicit command-line flags.

Pure: ``build_config(argv, params)`` takes the parsed-from-env parameters as a mapping, so
tests need no environment. Bad values raise ``ConfigError`` naming the parameter.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from kubetune_trainer.schedule import SCHEDULES

OPTIMIZERS = ("sgd", "adam", "adamw")
MODELS = ("mlp", "cnn")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
OBJECTIVES = ("val_accuracy", "val_loss", "train_loss", "train_seconds", "throughput")
# Parameter names a study may use for the same knob.
ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "num_epochs": "epochs", "bs": "batch_size"}


class ConfigError(ValueError):
    """A parameter or flag has a value the trainer cannot use; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; defaults train ``digits`` to >95 % in seconds."""

    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    dropout: float = 0.1
    epochs: int = 15
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    step_size: int = 0  # 0: epochs // 3
    gamma: float = 0.1
    patience: int = 5
    min_delta: float = 0.0
    model: str = "mlp"
    hidden: int = 128
    layers: int = 2
    dataset: str = "digits"
    val_fraction: float = 0.2
    data_seed: int = 0
    synthetic_samples: int = 4096
    synthetic_dims: int = 32
    synthetic_classes: int = 4
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: str = "auto"
    threads: int = 0  # 0: torch's default
    objectives: tuple[str, ...] = ("val_accuracy",)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _to_objectives(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ValueError("empty list")
    return names


_COERCE: dict[type | str, Callable[[Any], Any]] = {
    "float": _to_float,
    "int": _to_int,
    "bool": _to_bool,
    "str": lambda v: str(v).strip(),
    "tuple[str, ...]": _to_objectives,
}
_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    try:
        return _COERCE[_TYPES[name]](value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"parameter {name!r}: {exc}") from None


def _validate(cfg: TrainConfig) -> None:
    checks: list[tuple[bool, str]] = [
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (
            cfg.optimizer in OPTIMIZERS,
            f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}",
        ),
        (0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}"),
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}"),
        (cfg.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}"),
        (cfg.step_size >= 0, f"step_size must be >= 0, got {cfg.step_size}"),
        (0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}"),
        (cfg.model in MODELS, f"model must be one of {MODELS}, got {cfg.model!r}"),
        (cfg.hidden >= 1, f"hidden must be >= 1, got {cfg.hidden}"),
        (cfg.layers >= 1, f"layers must be >= 1, got {cfg.layers}"),
        (0 < cfg.val_fraction < 1, f"val_fraction must be in (0, 1), got {cfg.val_fraction}"),
        (cfg.synthetic_samples >= 10, "synthetic_samples must be >= 10"),
        (cfg.synthetic_dims >= 1, "synthetic_dims must be >= 1"),
        (cfg.synthetic_classes >= 2, "synthetic_classes must be >= 2"),
        (cfg.device in DEVICES, f"device must be one of {DEVICES}, got {cfg.device!r}"),
        (cfg.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {cfg.amp!r}"),
        (
            cfg.compile in COMPILE_MODES,
            f"compile must be one of {COMPILE_MODES}, got {cfg.compile!r}",
        ),
        (cfg.threads >= 0, f"threads must be >= 0, got {cfg.threads}"),
    ]
    checks += [
        (name in OBJECTIVES, f"objectives: unknown {name!r}, expected some of {OBJECTIVES}")
        for name in cfg.objectives
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    """Flags mirror ``TrainConfig``; every default is None so only explicit flags override."""
    p = argparse.ArgumentParser(
        prog="python -m kubetune_trainer",
        description="Train a small classifier; parameters from KUBETUNE_PARAMS, flags override.",
        argument_default=None,
    )
    d = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        extra: dict[str, Any] = {"help": f"(default: {shown})", "dest": f.name, "type": str}
        if f.name in {"lr", "batch_size", "weight_decay", "warmup_epochs"}:
            p.add_argument(flag, "--" + f.name, **extra)  # `--batch_size=$(...)` works too
        else:
            p.add_argument(flag, **extra)
    p.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="disable AMP")
    p.add_argument(
        "--no-compile",
        dest="compile",
        action="store_const",
        const="off",
        help="disable torch.compile",
    )
    return p


def build_config(argv: Sequence[str], params: Mapping[str, Any]) -> tuple[TrainConfig, list[str]]:
    """Merge defaults, tuned ``params`` and ``argv`` flags; return the config and warnings."""
    known = {f.name for f in fields(TrainConfig)}
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for raw_name, value in params.items():
        name = ALIASES.get(raw_name, raw_name)
        if name not in known:
            warnings.append(f"Ignored parameter {raw_name!r}: the trainer has no such setting.")
            continue
        values[name] = _coerce(name, value)
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise ConfigError(f"bad command line: {' '.join(argv)}") from None
    for name, value in vars(args).items():
        if value is not None:
            values[name] = _coerce(name, value)
    cfg = replace(TrainConfig(), **values)
    _validate(cfg)
    return cfg, warnings
