"""Benchmark 5: training throughput (samples/s) of the shipped trainer on this machine's CPU.

Runs ``kubetune_trainer.train.train`` in-process for each (dataset, model, batch size, threads)
configuration, after one warm-up run, and reports the trainer's own samples/s (training samples
over training seconds, evaluation included). A separate measurement starts the trainer the way
a Job does (``python -m kubetune_trainer``) to show the fixed per-trial start-up cost.

GPU, AMP and torch.compile figures need a GPU machine: on CPU the trainer runs float32 without
compile by design (see ``kubetune_trainer.train.pick_amp``), so none is measured here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    conditions,
    exit_cleanly_on_sigterm,
    parser,
    print_conditions,
    print_table,
    size_name,
    write_result,
)

NAME = "trainer_throughput"

# (dataset, model, extra flags) x batch sizes; epochs chosen so each run takes ~0.3-2 s on CPU.
CONFIGS: dict[str, list[tuple[str, str, list[str], list[int]]]] = {
    "smoke": [("synthetic", "mlp", ["--synthetic-samples=512", "--epochs=1"], [64])],
    "short": [
        ("digits", "mlp", ["--epochs=5"], [32, 128, 512]),
        ("digits", "cnn", ["--epochs=1"], [64, 256]),
        ("synthetic", "mlp", ["--epochs=2"], [64, 256, 1024]),
    ],
    "full": [
        ("digits", "mlp", ["--epochs=10"], [16, 32, 64, 128, 256, 512]),
        ("digits", "cnn", ["--epochs=3"], [32, 64, 128, 256]),
        ("synthetic", "mlp", ["--epochs=3"], [32, 64, 128, 256, 512, 1024, 2048]),
        (
            "synthetic",
            "mlp",
            ["--epochs=2", "--synthetic-samples=16384", "--synthetic-dims=128", "--hidden=512"],
            [128, 512, 2048],
        ),
    ],
}


def measure(flags: Sequence[str], repeats: int) -> dict[str, Any]:
    """Train ``repeats`` times with the trainer's own config parser; keep the best samples/s."""
    from kubetune_trainer.config import build_config
    from kubetune_trainer.data import load
    from kubetune_trainer.train import train

    cfg, _ = build_config(list(flags), {})
    data = load(cfg)
    runs = []
    for _ in range(repeats):
        result = train(cfg, data)
        runs.append(result)
    best = max(runs, key=lambda r: r.throughput)
    return {
        "samples_per_s": best.throughput,
        "samples_per_s_all": [r.throughput for r in runs],
        "train_seconds": best.train_seconds,
        "epochs": best.epochs_run,
        "samples": best.samples,
        "val_accuracy": best.best_val_accuracy,
        "device": best.device,
        "amp": best.amp,
        "compiled": best.compiled,
    }


def process_startup(flags: Sequence[str]) -> dict[str, Any]:
    """Wall time of ``python -m kubetune_trainer`` vs the training time it reports.

    The difference (interpreter, torch import, data load) is paid by every trial and is not
    saved by pruning; it is what a Job's container pays on top of the image pull.
    """
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "termination-log")
        env = dict(os.environ)
        env.update({"KUBETUNE_TERMINATION_LOG": log, "KUBETUNE_PARAMS": "{}"})
        env.pop("KUBETUNE_REPORT_URL", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "operator"), str(REPO / "trainer-image"), env.get("PYTHONPATH", "")]
        )
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "kubetune_trainer", *flags],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - started
        result_text = Path(log).read_text() if os.path.exists(log) else ""
    train_seconds = None
    for line in proc.stdout.splitlines():
        if line.startswith("epoch "):
            for part in line.split():
                if part.startswith("seconds="):
                    train_seconds = (train_seconds or 0.0) + float(part.split("=", 1)[1])
    return {
        "flags": list(flags),
        "exit_code": proc.returncode,
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "startup_seconds": wall - train_seconds if train_seconds is not None else None,
        "termination_message": json.loads(result_text) if result_text.strip() else None,
        "stderr_tail": proc.stderr[-500:] if proc.returncode else "",
    }


def run(size: str) -> dict[str, Any]:
    import torch

    repeats = 1 if size == "smoke" else 2
    thread_counts = [1] if size == "smoke" else sorted({1, torch.get_num_threads()})
    info = conditions(
        device="cpu",
        torch_threads_default=torch.get_num_threads(),
        cuda_available=torch.cuda.is_available(),
        size=size,
    )
    print_conditions(info)
    measure(["--dataset=synthetic", "--synthetic-samples=256", "--epochs=1"], 1)  # warm-up
    rows: list[dict[str, Any]] = []
    for dataset, model, extra, batch_sizes in CONFIGS[size]:
        for threads in thread_counts:
            for bs in batch_sizes:
                flags = [
                    f"--dataset={dataset}",
                    f"--model={model}",
                    f"--batch-size={bs}",
                    f"--threads={threads}",
                    "--device=cpu",
                    *extra,
                ]
                row = {"dataset": dataset, "model": model, "batch_size": bs, "threads": threads}
                row["extra"] = extra
                row.update(measure(flags, repeats))
                rows.append(row)
    print("\nTrainer throughput on CPU (best of", repeats, "runs, float32, no compile):")
    print_table(
        ["dataset", "model", "batch", "threads", "samples/s", "train s", "val acc"],
        [
            [
                r["dataset"] + ("*" if any("hidden" in e for e in r["extra"]) else ""),
                r["model"],
                r["batch_size"],
                r["threads"],
                r["samples_per_s"],
                r["train_seconds"],
                r["val_accuracy"],
            ]
            for r in rows
        ],
    )
    startup = process_startup(
        ["--dataset=digits", "--epochs=1" if size == "smoke" else "--epochs=3", "--device=cpu"]
    )
    print(
        f"\nTrial process start-up (python -m kubetune_trainer, digits): wall "
        f"{startup['wall_seconds']:.2f} s, of which training {startup['train_seconds'] or 0:.2f} s"
        f" -> fixed start-up cost {startup['startup_seconds'] or 0:.2f} s per trial "
        f"(exit code {startup['exit_code']})."
    )
    print(
        "GPU / AMP / torch.compile: not measured (no GPU in this environment); run "
        "`python -m benchmarks.trainer_throughput --full` on a GPU machine (device=auto picks "
        "CUDA, bf16/fp16 autocast and torch.compile there)."
    )
    return {
        "benchmark": NAME,
        "conditions": info,
        "results": rows,
        "process_startup": startup,
        "summary": {
            "digits_mlp_best_samples_per_s": max(
                (r["samples_per_s"] for r in rows if r["dataset"] == "digits"), default=None
            ),
            "synthetic_mlp_best_samples_per_s": max(
                (r["samples_per_s"] for r in rows if r["dataset"] == "synthetic"), default=None
            ),
            "trial_startup_seconds": startup["startup_seconds"],
        },
        "gpu": "not measured: no GPU in this environment",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    result = run(size_name(args))
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
