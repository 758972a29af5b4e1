"""Small classifiers: an MLP for any input, a CNN for image-shaped input."""

from __future__ import annotations

from torch import nn

from kubetune_trainer.config import ConfigError, TrainConfig


def mlp(input_shape: tuple[int, ...], num_classes: int, cfg: TrainConfig) -> nn.Module:
    """Flatten, then ``layers`` x (Linear, ReLU, Dropout), then a linear head."""
    width = 1
    for size in input_shape:
        width *= size
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(cfg.layers):
        layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = cfg.hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int, cfg: TrainConfig) -> nn.Module:
    """Two 3x3 conv layers, a 2x2 max-pool, dropout and an MLP head; needs (C, H, W) or (H, W)."""
    if len(input_shape) == 2:
        input_shape = (1, *input_shape)
    if len(input_shape) != 3:
        raise ConfigError(f"model 'cnn' needs image inputs (C, H, W); got shape {input_shape}")
    channels, height, width = input_shape
    pooled = (height // 2) * (width // 2)
    if pooled == 0:
        raise ConfigError(f"model 'cnn' needs images of at least 2x2; got {height}x{width}")
    return nn.Sequential(
        nn.Flatten(),  # accepts (N, C, H, W), (N, H, W) or flat (N, C*H*W) alike
        nn.Unflatten(1, (channels, height, width)),
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(cfg.dropout),
        nn.Flatten(),
        nn.Linear(64 * pooled, cfg.hidden),
        nn.ReLU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, num_classes),
    )


def build(input_shape: tuple[int, ...], num_classes: int, cfg: TrainConfig) -> nn.Module:
    """The model named by ``cfg.model``."""
    return (cnn if cfg.model == "cnn" else mlp)(input_shape, num_classes, cfg)
