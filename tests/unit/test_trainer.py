"""The PyTorch trainer on CPU: configuration, schedule, training, determinism, SDK hand-off."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kubetune.trial import TrialContext
from kubetune_trainer import ConfigError, EarlyStopping, build_config, lr_factor, train
from kubetune_trainer.cli import main
from kubetune_trainer.data import load


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Tiny models train fastest on one thread, above all on a shared 2-core machine."""
    torch.set_num_threads(1)


# -- configuration ----------------------------------------------------------------------------


def test_params_override_defaults_and_flags_override_params() -> None:
    cfg, warnings = build_config(
        ["--batch-size=32", "--epochs", "3"],
        {"lr": "0.05", "batch_size": 128, "optimizer": "sgd", "momentum": 0.8, "dropout": 0.2},
    )
    assert (cfg.lr, cfg.optimizer, cfg.momentum, cfg.dropout) == (0.05, "sgd", 0.8, 0.2)
    assert cfg.batch_size == 32  # the flag wins over the tuned parameter
    assert cfg.epochs == 3
    assert cfg.weight_decay == 1e-4  # untouched default
    assert warnings == []


def test_template_style_flags_and_aliases_work() -> None:
    cfg, _ = build_config(["--lr=0.02", "--batch_size=16"], {"learning_rate": 0.5, "wd": 0.01})
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay) == (0.02, 16, 0.01)


def test_unknown_parameter_is_a_warning_not_an_error() -> None:
    _, warnings = build_config([], {"hidden_units": 64})
    assert len(warnings) == 1 and "hidden_units" in warnings[0]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"lr": -1}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"dropout": 1.0}, "dropout"),
        ({"momentum": 1.5}, "momentum"),
        ({"schedule": "linear"}, "schedule"),
        ({"epochs": True}, "epochs"),
        ({"objectives": "val_accuracy,f1"}, "f1"),
    ],
)
def test_bad_values_name_the_parameter(params: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config([], params)


def test_bad_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad command line"):
        build_config(["--no-such-flag"], {})


# -- schedule and early stopping --------------------------------------------------------------


def test_warmup_rises_linearly_then_cosine_decays_to_zero() -> None:
    kw = {"epochs": 10, "warmup_epochs": 2.0, "schedule": "cosine", "step_size": 3, "gamma": 0.1}
    assert lr_factor(1.0, **kw) == pytest.approx(0.5)
    assert lr_factor(2.0, **kw) == pytest.approx(1.0)
    assert lr_factor(6.0, **kw) == pytest.approx(0.5)
    assert lr_factor(10.0, **kw) == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor(t / 10, **kw) for t in range(20, 100)]
    assert factors == sorted(factors, reverse=True)


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs() -> None:
    kw = {"epochs": 9, "warmup_epochs": 0.0, "schedule": "step", "step_size": 3, "gamma": 0.5}
    assert [lr_factor(float(e), **kw) for e in (0, 2, 3, 6, 8)] == [1, 1, 0.5, 0.25, 0.25]


def test_early_stopping_waits_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    decisions = [stopper.update(v, e) for e, v in enumerate([0.5, 0.7, 0.6, 0.7, 0.65])]
    assert decisions == [False, False, False, True, True]
    assert (stopper.best, stopper.best_epoch) == (0.7, 1)
    assert not any(EarlyStopping(patience=0).update(0.1, e) for e in range(5))


# -- training ---------------------------------------------------------------------------------


def test_two_epochs_on_digits_is_far_above_chance() -> None:
    cfg, _ = build_config(["--epochs=2", "--lr=0.01"], {})
    result = train(cfg, load(cfg))
    assert result.epochs_run == 2
    assert result.best_val_accuracy > 0.6  # chance is 0.1
    assert result.device == "cpu" and result.amp == "off" and not result.compiled
    assert result.throughput > 0


def test_same_seed_same_run_other_seed_other_run() -> None:
    argv = ["--epochs=2", "--dropout=0.3", "--hidden=32"]
    cfg, _ = build_config([*argv, "--seed=3"], {})
    first = train(cfg, load(cfg)).history
    second = train(cfg, load(cfg)).history
    other_cfg, _ = build_config([*argv, "--seed=4"], {})
    other = train(other_cfg, load(other_cfg)).history
    losses = [(s.train_loss, s.val_loss, s.val_accuracy) for s in first]
    assert losses == [(s.train_loss, s.val_loss, s.val_accuracy) for s in second]
    assert losses != [(s.train_loss, s.val_loss, s.val_accuracy) for s in other]
    assert torch.are_deterministic_algorithms_enabled()


def test_cnn_and_synthetic_data_train() -> None:
    cfg, _ = build_config(["--model=cnn", "--epochs=1", "--hidden=16"], {})
    assert train(cfg, load(cfg)).best_val_accuracy > 0.2
    cfg, _ = build_config(
        [
            "--dataset=synthetic",
            "--synthetic-samples=400",
            "--synthetic-dims=8",
            "--synthetic-classes=3",
            "--epochs=2",
        ],
        {},
    )
    data = load(cfg)
    assert data.input_shape == (8,) and data.num_classes == 3
    assert train(cfg, data).best_val_accuracy > 1 / 3


def test_cnn_refuses_flat_inputs_clearly() -> None:
    cfg, _ = build_config(["--model=cnn", "--dataset=synthetic"], {})
    with pytest.raises(ConfigError, match="image inputs"):
        train(cfg, load(cfg))


def test_a_plugged_loader_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "def xor():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.rand(600, 2, generator=g)\n"
        "    y = ((x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)).long()\n"
        "    return (x[:500], y[:500]), (x[500:], y[500:])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg, _ = build_config(["--dataset=my_data:xor", "--epochs=3", "--lr=0.02"], {})
    data = load(cfg)
    assert data.input_shape == (2,) and data.num_classes == 2
    assert train(cfg, data).epochs_run >= 1
    bad, _ = build_config(["--dataset=my_data:nothing"], {})
    with pytest.raises(ConfigError, match="my_data:nothing"):
        load(bad)


def test_divergence_stops_the_run_instead_of_training_on_nan() -> None:
    cfg, _ = build_config(["--optimizer=sgd", "--lr=1e4", "--epochs=3", "--warmup-epochs=0"], {})
    result = train(cfg, load(cfg))
    assert result.stopped == "diverged"
    assert math.isfinite(result.best_val_accuracy)


def test_on_epoch_returning_true_prunes() -> None:
    cfg, _ = build_config(["--epochs=5"], {})
    seen: list[int] = []
    result = train(cfg, load(cfg), on_epoch=lambda s: seen.append(s.epoch) or s.epoch == 1)
    assert result.stopped == "pruned" and seen == [0, 1] and result.epochs_run == 2


# -- the command line and the SDK -------------------------------------------------------------


def sdk(tmp_path: Path, params: dict[str, object]) -> tuple[TrialContext, Path]:
    log = tmp_path / "termination-log"
    env = {
        "KUBETUNE_PARAMS": json.dumps(params),
        "KUBETUNE_STUDY": "s",
        "KUBETUNE_NAMESPACE": "local",
        "KUBETUNE_TRIAL_NUMBER": "0",
        "KUBETUNE_TERMINATION_LOG": str(log),
    }
    return TrialContext(env), log


def test_main_reads_params_and_writes_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx, log = sdk(tmp_path, {"lr": 0.01, "epochs": 2, "optimizer": "adam"})
    assert main(["--objectives=val_accuracy,train_seconds"], sdk=ctx) == 0
    values = json.loads(log.read_text())["values"]
    assert len(values) == 2 and values[0] > 0.6 and values[1] > 0
    out = capsys.readouterr().out
    assert "optimizer=adam" in out and "epoch 2/2" in out
    assert "throughput samples/s:" in out


def test_main_sends_heartbeats_during_long_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Recording(TrialContext):
        beats = 0

        def heartbeat(self) -> None:
            Recording.beats += 1

    ctx, log = sdk(tmp_path, {"epochs": 1, "batch_size": 64})
    recording = Recording(ctx._env)
    monkeypatch.setattr("kubetune_trainer.cli.HEARTBEAT_SECONDS", 0.0)  # every step
    assert main([], sdk=recording) == 0
    # digits: 1,437 training samples / 64 -> one heartbeat per optimizer step.
    assert Recording.beats >= 10, Recording.beats
    assert json.loads(log.read_text())["values"]


def test_main_fails_the_trial_on_a_bad_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx, log = sdk(tmp_path, {"optimizer": "lion"})
    assert main([], sdk=ctx) == 2
    assert "optimizer" in capsys.readouterr().err
    assert log.exists() is False or log.read_text() == ""
