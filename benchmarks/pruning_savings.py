"""Benchmark 4: compute saved by pruning, at what cost in the best value found.

The same study (the shipped trainer on ``digits``, the quickstart's search space, TPE) runs with
no pruner, the Median pruner and Hyperband, for several seeds, with the same number of trials.
The cost of a study is the trainer's own training seconds summed over its trials (the process's
CPU-seconds here, standing in for GPU-seconds, so that other load on a shared machine does not
blur the comparison) and, noise-free, the number of epochs trained.

How it is driven: Optuna's ask/tell in this process, with the sampler and pruner built from the
manifest by ``kubetune.sampling`` and parameters from ``kubetune.search_space.suggest_params``
(the code the operator and ``kubetune run`` use), and the trainer's training function
``kubetune_trainer.train.train`` reporting every epoch's value and stopping when
``trial.should_prune()`` says so -- the same decisions the report API makes. It skips the
per-trial process start-up (about 3 s on this CPU, see ``trainer_throughput``), which pruning
cannot save; the printed "with start-up" column adds it back. ``--via local`` instead runs each
study through ``kubetune.local.run_local`` (real trainer processes, real report API, SQLite),
which is much slower.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from benchmarks._common import (
    conditions,
    exit_cleanly_on_sigterm,
    mean_std,
    parser,
    print_conditions,
    print_table,
    size_name,
    verdict,
    write_result,
)

NAME = "pruning_savings"
#: Seconds a trial process needs before training (interpreter, torch import, data) when
#: ``trainer_throughput`` has not measured it on this machine.
DEFAULT_STARTUP = 3.0

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 4, "epochs": 3, "seeds": [0]},
    "short": {"trials": 20, "epochs": 12, "seeds": [0, 1, 2]},
    "full": {"trials": 30, "epochs": 20, "seeds": [0, 1, 2, 3, 4]},
}


def pruners(epochs: int) -> dict[str, dict[str, Any]]:
    """Pruner blocks as a user would write them in the manifest."""
    return {
        "None": {"type": "None"},
        "Median": {"type": "Median", "nStartupTrials": 5, "nWarmupSteps": 2},
        "Hyperband": {
            "type": "Hyperband",
            "minResource": 1,
            "maxResource": epochs,
            "reductionFactor": 3,
        },
    }


def manifest(pruner: dict[str, Any], *, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    """The quickstart study, with this run's pruner, seed, budget and epochs."""
    from support import manifests  # tests/ is on sys.path once benchmarks._common is imported

    return manifests.study_manifest(
        f"bench-prune-{pruner['type'].lower()}-{seed}",
        search_space=[
            {"name": "lr", "float": {"low": 1.0e-4, "high": 3.0e-1, "log": True}},
            {"name": "batch_size", "categorical": {"choices": [32, 64, 128]}},
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adamw"]}},
            {
                "name": "momentum",
                "float": {"low": 0.0, "high": 0.95},
                "when": {"param": "optimizer", "in": ["sgd"]},
            },
            {"name": "weight_decay", "float": {"low": 1.0e-6, "high": 1.0e-2, "log": True}},
            {"name": "dropout", "float": {"low": 0.0, "high": 0.5, "step": 0.05}},
        ],
        sampler={"type": "TPE", "seed": seed, "nStartupTrials": 6},
        pruner=pruner,
        budget={"maxTrials": trials, "parallelism": 1},
        trial={"result": {"from": "Reporter"}},
        container={
            "name": "trainer",
            "image": "kubetune-trainer:0.1.0",
            "command": ["python", "-m", "kubetune_trainer"],
            "args": _trainer_args(seed, epochs),
        },
    )


def _trainer_args(seed: int, epochs: int) -> list[str]:
    # One thread per trial: what a 1-CPU pod gets, and stable timings on a shared machine.
    return [
        "--dataset=digits",
        f"--epochs={epochs}",
        "--warmup-epochs=1",
        "--schedule=cosine",
        f"--seed={seed}",
        "--threads=1",
        "--device=cpu",
    ]


def run_in_process(doc: dict[str, Any]) -> dict[str, Any]:
    """One study by ask/tell in this process; returns its cost and best value."""
    from kubetune.sampling import directions, make_pruner, make_sampler
    from kubetune.search_space import suggest_params
    from kubetune.spec import load_manifest
    from kubetune_trainer.config import build_config
    from kubetune_trainer.data import load
    from kubetune_trainer.train import EpochStats, train

    ts = load_manifest(yaml.safe_dump(doc))
    spec = ts.spec
    args = spec.trial.template["spec"]["containers"][0]["args"]
    # A fixed study name: Hyperband assigns trials to brackets by hashing it with the number.
    study = optuna.create_study(
        study_name=ts.metadata.name,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=directions(spec),
    )
    seconds = 0.0
    epochs = 0
    data = None
    assert spec.budget.max_trials is not None
    for _ in range(spec.budget.max_trials):
        trial = study.ask()
        params = suggest_params(trial, spec)
        cfg, _ = build_config(args, params)
        data = data or load(cfg)

        def on_epoch(stats: EpochStats, trial: optuna.Trial = trial) -> bool:
            trial.report(stats.value, stats.epoch)
            return trial.should_prune()

        # CPU seconds of this process, not wall time: other work on a shared machine then
        # does not inflate a study's cost (one torch thread, so CPU time ~ busy time).
        result = train(cfg, data, on_epoch=on_epoch, clock=time.process_time)
        seconds += result.train_seconds
        epochs += result.epochs_run
        if result.stopped == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, result.best_val_accuracy)
    return _summarise(study, seconds, epochs)


def run_via_local(doc: dict[str, Any]) -> dict[str, Any]:
    """One study through ``kubetune run``'s engine: a trainer process per trial, SQLite."""
    from rich.console import Console

    from kubetune.local import run_local

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(doc))
        storage = f"sqlite:///{tmp}/study.db"
        outcome = run_local(
            path,
            storage=storage,
            console=Console(quiet=True),
            log_dir=Path(tmp) / "logs",
            poll_interval=0.02,
        )
        study = optuna.load_study(study_name=outcome.study_name, storage=storage)
        seconds = 0.0
        epochs = 0
        for t in study.trials:
            if t.datetime_start and t.datetime_complete:
                seconds += (t.datetime_complete - t.datetime_start).total_seconds()
            epochs += len(t.intermediate_values)
        return _summarise(study, seconds, epochs)


def _summarise(study: optuna.Study, seconds: float, epochs: int) -> dict[str, Any]:
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "trials": len(states),
        "complete": len(complete),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "seconds": seconds,
        "epochs": epochs,
        "best_value": max((t.values[0] for t in complete), default=math.nan),
    }


def measured_startup(out: Path | None) -> float:
    """The trainer's per-trial start-up seconds from ``trainer_throughput``'s last result."""
    try:
        data = json.loads((out / "trainer_throughput.json").read_text()) if out else {}
        value = float(data["process_startup"]["startup_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_STARTUP
    return value if math.isfinite(value) and value > 0 else DEFAULT_STARTUP


def run(size: str, via: str = "in-process", out: Path | None = None) -> dict[str, Any]:
    cfg = SIZES[size]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Trial processes (--via local) already pay their start-up inside the measured seconds.
    startup = measured_startup(out) if via == "in-process" else 0.0
    info = conditions(
        storage="in-memory" if via == "in-process" else "sqlite",
        size=size,
        driven_by=via,
        trials_per_study=cfg["trials"],
        epochs_per_trial=cfg["epochs"],
        seeds=cfg["seeds"],
        trainer_args=_trainer_args(0, cfg["epochs"]),
    )
    print_conditions(info)
    runner = run_in_process if via == "in-process" else run_via_local
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in cfg["seeds"]:
        for name, block in pruners(cfg["epochs"]).items():
            doc = manifest(block, seed=seed, trials=cfg["trials"], epochs=cfg["epochs"])
            row = {"pruner": name, "seed": seed, **runner(doc)}
            runs.append(row)
            print(
                f"  seed {seed} {name:9s}: {row['seconds']:7.2f} s, {row['epochs']:4d} epochs, "
                f"best {row['best_value']:.4f}, pruned {row['pruned']}/{row['trials']}",
                flush=True,
            )
    baseline = {r["seed"]: r for r in runs if r["pruner"] == "None"}
    summary: dict[str, Any] = {}
    table = []
    for name in pruners(cfg["epochs"]):
        rows = [r for r in runs if r["pruner"] == name]
        saved_s = [1 - r["seconds"] / baseline[r["seed"]]["seconds"] for r in rows]
        saved_e = [1 - r["epochs"] / baseline[r["seed"]]["epochs"] for r in rows]
        with_startup = [
            1
            - (r["seconds"] + startup * r["trials"])
            / (baseline[r["seed"]]["seconds"] + startup * r["trials"])
            for r in rows
        ]
        gap = [
            (baseline[r["seed"]]["best_value"] - r["best_value"])
            / baseline[r["seed"]]["best_value"]
            for r in rows
        ]
        s_mean, s_std = mean_std(saved_s)
        e_mean, e_std = mean_std(saved_e)
        w_mean, _ = mean_std(with_startup)
        g_mean, _ = mean_std(gap)
        best_mean, best_std = mean_std([r["best_value"] for r in rows])
        met = None if name == "None" else (s_mean >= 0.40 and max(gap) <= 0.01)
        summary[name] = {
            "seconds_mean": mean_std([r["seconds"] for r in rows])[0],
            "seconds_saved_mean": s_mean,
            "seconds_saved_std": s_std,
            "epochs_saved_mean": e_mean,
            "epochs_saved_std": e_std,
            "seconds_saved_with_startup_mean": w_mean,
            "best_value_mean": best_mean,
            "best_value_std": best_std,
            "best_value_gap_mean": g_mean,
            "best_value_gap_worst": max(gap),
            "pruned_mean": mean_std([r["pruned"] for r in rows])[0],
            "target_met": met,
        }
        table.append(
            [
                name,
                f"{summary[name]['seconds_mean']:.1f}",
                f"{s_mean:+.0%} ± {s_std:.0%}",
                f"{e_mean:+.0%} ± {e_std:.0%}",
                f"{w_mean:+.0%}",
                f"{best_mean:.4f} ± {best_std:.4f}",
                f"{g_mean:+.2%} (worst {max(gap):+.2%})",
                verdict(met),
            ]
        )
    print(
        f"\nPruning, {len(cfg['seeds'])} seeds x {cfg['trials']} trials x up to "
        f"{cfg['epochs']} epochs (saved = fewer than no pruning; gap = best value below it):"
    )
    print_table(
        [
            "pruner",
            "train s",
            "seconds saved",
            "epochs saved",
            f"saved w/ {startup:.1f}s start-up" if startup else "saved (processes)",
            "best value",
            "gap",
            "target",
        ],
        table,
    )
    print("Target: >= 40 % fewer seconds with the best value within 1 % of no pruning.")
    print(f"Wall time: {time.perf_counter() - started:.1f} s")
    return {
        "benchmark": NAME,
        "conditions": info,
        "runs": runs,
        "summary": summary,
        "target": "seconds saved >= 40 % at a best value within 1 % of no pruning",
        "startup_seconds_assumed": startup,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--via",
        choices=["in-process", "local"],
        default="in-process",
        help="in-process ask/tell (default) or kubetune.local.run_local (trainer processes)",
    )
    args = p.parse_args(argv)
    result = run(size_name(args), args.via, args.out)
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
