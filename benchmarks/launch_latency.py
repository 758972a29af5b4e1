"""Benchmark 2: launch latency, from a trial's Job completing to the next Job created.

The real operator (own process) against the emulated API with the fake kubelet in instant
mode, so every trial ends the moment its pod starts and the operator must refill the slot.
A store listener in the API server records, with ``time.perf_counter``, when each Job turns
Complete and when each Job is created (the API's own timestamps have one-second precision);
the k-th completion frees the slot that Job number k + parallelism fills. The operator's own
``kubetune_job_launch_latency_seconds`` histogram (slot seen free -> Job created) is printed
beside it. Targets: p50 <= 100 ms, p99 <= 500 ms at parallelism 8.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    conditions,
    exit_cleanly_on_sigterm,
    mean_std,
    parser,
    percentile,
    print_conditions,
    print_table,
    size_name,
    verdict,
    write_result,
)

NAME = "launch_latency"
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 6, "parallelism": 2, "samplers": ["Random"]},
    "short": {"trials": 150, "parallelism": 8, "samplers": ["TPE"]},
    "full": {"trials": 400, "parallelism": 8, "samplers": ["TPE", "Random"]},
}


def run(size: str, pg: Any = None, profile: Path | None = None) -> dict[str, Any]:
    """Run at ``size``; ``pg`` is a running ``PostgresServer`` to reuse (else one is started).

    With ``profile`` (a file path), py-spy samples the operator during the measured studies.
    """
    from benchmarks import _cluster

    cfg = SIZES[size]
    rows: list[dict[str, Any]] = []
    with _cluster.emulated_cluster(pg=pg) as bench:
        info = conditions(
            storage=bench.storage_url,
            size=size,
            trials=cfg["trials"],
            parallelism=cfg["parallelism"],
            operator=_cluster.OPERATOR_SETUP,
        )
        print_conditions(info)
        _cluster.warm_up(bench)
        for sampler in cfg["samplers"]:
            name = f"latency-{sampler.lower()}"
            with contextlib.ExitStack() as stack:
                if profile is not None:
                    stack.enter_context(_cluster.profiled(bench, profile))
                study = _cluster.run_study(
                    bench,
                    name,
                    trials=cfg["trials"],
                    parallelism=cfg["parallelism"],
                    sampler=sampler,
                    timeout=max(60.0, cfg["trials"] * 2.0),
                )
            bench.check_storage()
            lat = bench.timeline.launch_latencies(cfg["parallelism"], f"default/{name}")
            ms = [1000 * x for x in lat]
            p50, p95, p99 = (percentile(ms, q) for q in (50, 95, 99))
            mean, std = mean_std(ms)
            row = {
                "sampler": sampler,
                "samples": len(ms),
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "max_ms": max(ms, default=float("nan")),
                "mean_ms": mean,
                "std_ms": std,
                "study": study,
                "target_met": (p50 <= 100 and p99 <= 500) if ms else False,
            }
            rows.append(row)
            print(
                f"  {sampler}: {len(ms)} launches, p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                f"p99 {p99:.0f} ms ({study['finished']}/{cfg['trials']} trials told)",
                flush=True,
            )
        text = _cluster.scrape(bench)
        hists = {
            name: _cluster.histogram(text, f"kubetune_{name}")
            for name in (
                "job_launch_latency_seconds",
                "reconcile_duration_seconds",
                "optuna_ask_duration_seconds",
            )
        }
    print(
        f"\nLaunch latency (Job Complete -> next Job created), parallelism {cfg['parallelism']}"
        " (targets: p50 <= 100 ms, p99 <= 500 ms):"
    )
    print_table(
        ["sampler", "launches", "p50 ms", "p95 ms", "p99 ms", "max ms", "target"],
        [
            [
                r["sampler"],
                r["samples"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["max_ms"],
                verdict(r["target_met"]),
            ]
            for r in rows
        ],
    )
    print("Operator's own histograms (bucket estimates, whole run incl. warm-up):")
    for name, h in hists.items():
        print(
            f"  kubetune_{name}: p50 {1000 * h['p50']:.0f} ms, p99 {1000 * h['p99']:.0f} ms, "
            f"mean {1000 * h['mean']:.0f} ms over {h['count']:.0f}"
        )
    hot = _cluster.profile_summary(profile) if profile is not None else []
    if hot:
        print(f"\nWhere the operator spends CPU (py-spy, inclusive, {profile}):")
        for function, share in hot[:25]:
            print(f"  {share:6.1%}  {function}")
    elif profile is not None:
        print("\nNo profile: install py-spy (pip install py-spy) to sample the operator.")
    return {
        "benchmark": NAME,
        "profile_top": hot[:40],
        "conditions": info,
        "results": rows,
        "operator_histograms": hists,
        "summary": {
            r["sampler"]: {
                "p50_ms": r["p50_ms"],
                "p95_ms": r["p95_ms"],
                "p99_ms": r["p99_ms"],
                "target_met": r["target_met"],
            }
            for r in rows
        },
        "target": "p50 <= 100 ms, p99 <= 500 ms",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy and print where its CPU goes",
    )
    args = p.parse_args(argv)
    profile = args.out / "launch_latency-operator.pyspy.txt" if args.profile else None
    if profile is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    result = run(size_name(args), profile=profile)
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
