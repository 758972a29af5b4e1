"""Benchmark 2: launch latency, from a trial's Job completing to the next Job created.

The real operator (own process) against the real control plane (v1.32) with the kubelet
stand-in in instant mode, so every trial's pod ends the moment it starts, the real Job
controller turns the Job Complete, and the operator must refill the slot. A watch on the Jobs
records, with ``time.perf_counter``, when each Job is first seen Complete and when each Job is
first seen (the API's own timestamps have one-second precision); the k-th completion frees the
slot that Job number k + parallelism fills. The operator's own
``kubetune_job_launch_latency_seconds`` histogram (slot seen free -> Job created) is printed
beside it, per study. Targets: p50 <= 100 ms, p99 <= 500 ms, at parallelism 8 and 32.
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
#: (sampler, parallelism, trials, askAhead) per size: each a study of its own on one operator.
#: askAhead None is the shipped default (``kubetune.reconcile._ahead``); 0 asks only when a
#: slot frees, as before ask-ahead: the baseline measured in the same run.
SIZES: dict[str, list[tuple[str, int, int, int | None]]] = {
    "smoke": [("Random", 2, 6, None)],
    "short": [
        (sampler, parallelism, trials, ahead)
        for sampler, parallelism, trials in (
            ("TPE", 8, 100),
            ("Random", 8, 100),
            ("TPE", 32, 80),
            ("Random", 32, 80),
        )
        for ahead in (None, 0)
    ],
    "full": [
        (sampler, parallelism, 400, ahead)
        for sampler in ("TPE", "Random")
        for parallelism in (8, 32)
        for ahead in (None, 0)
    ],
}
HISTOGRAMS = (
    "job_launch_latency_seconds",
    "reconcile_duration_seconds",
    "optuna_ask_duration_seconds",
)


def run(
    size: str,
    pg: Any = None,
    profile: Path | None = None,
    cluster: Any = None,
    trace: Path | None = None,
    *,
    only_parallelism: int | None = None,
) -> dict[str, Any]:
    """Run at ``size``; ``pg`` is a running ``PostgresServer`` to reuse (else one is started),
    ``cluster`` the tests' running cluster (else a control plane of its own is started).

    With ``profile`` (a folder), py-spy samples the operator during each measured study and
    writes ``launch_latency-<sampler>-p<parallelism>.pyspy.txt`` there. With ``trace`` (a
    file), the operator runs with timing wrappers (``benchmarks._traced_operator``) and each
    study's reconcile passes are broken down call by call.
    """
    from benchmarks import _cluster

    runs = [r for r in SIZES[size] if only_parallelism in (None, r[1])]
    rows: list[dict[str, Any]] = []
    with _cluster.real_cluster(pg=pg, cluster=cluster) as bench:
        info = conditions(
            storage=bench.storage_url,
            size=size,
            runs=[
                {"sampler": s, "parallelism": p, "trials": t, "askAhead": a} for s, p, t, a in runs
            ],
            operator=_cluster.OPERATOR_SETUP,
            control_plane_qps=_cluster.CONTROL_PLANE_QPS if cluster is None else None,
            timestamps="perf_counter at the benchmark's watch event: Job first seen Complete, "
            "next Job first seen (both from one watch stream)",
        )
        print_conditions(info)
        _cluster.warm_up(bench, trace=trace)
        for sampler, parallelism, trials, ask_ahead in runs:
            name = f"latency-{sampler.lower()}-p{parallelism}" + (
                "" if ask_ahead is None else f"-a{ask_ahead}"
            )
            spy = None
            if profile is not None:
                spy = profile / f"{NAME}-{sampler.lower()}-p{parallelism}.pyspy.txt"
            before = _cluster.scrape(bench)
            with contextlib.ExitStack() as stack:
                if spy is not None:
                    stack.enter_context(_cluster.profiled(bench, spy))
                study = _cluster.run_study(
                    bench,
                    name,
                    trials=trials,
                    parallelism=parallelism,
                    sampler=sampler,
                    timeout=max(60.0, trials * 2.0),
                    ask_ahead=ask_ahead,
                )
            bench.check_storage()
            after = _cluster.scrape(bench)
            lat = bench.timeline.launch_latencies(parallelism, bench.study_key(name))
            with bench.timeline.lock:
                run_ms = [1000 * x for x in bench.timeline.job_seconds[bench.study_key(name)]]
            ms = [1000 * x for x in lat]
            p50, p95, p99 = (percentile(ms, q) for q in (50, 95, 99))
            mean, std = mean_std(ms)
            hists = {
                h: _cluster.histogram(after, f"kubetune_{h}", minus=before) for h in HISTOGRAMS
            }
            hot = _cluster.profile_summary(spy) if spy is not None else []
            traced = (
                _cluster.trace_summary(trace, bench.study_key(name)) if trace is not None else {}
            )
            row = {
                "sampler": sampler,
                "parallelism": parallelism,
                "ask_ahead": _cluster.effective_ask_ahead(sampler, parallelism, ask_ahead),
                "baseline": ask_ahead == 0,
                "samples": len(ms),
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "max_ms": max(ms, default=float("nan")),
                "mean_ms": mean,
                "std_ms": std,
                # Job seen created -> seen Complete: the Job controller (which batches pod
                # updates for up to 1 s), the scheduler and the kubelet stand-in.
                "job_run_p50_ms": percentile(run_ms, 50),
                "job_run_p95_ms": percentile(run_ms, 95),
                "study": study,
                "operator_histograms": hists,
                "profile_top": hot[:40],
                "trace": traced,
                "target_met": (p50 <= 100 and p99 <= 500) if ms else False,
            }
            rows.append(row)
            own = hists["job_launch_latency_seconds"]
            print(
                f"  {_key(row)} (askAhead {row['ask_ahead']}): {len(ms)} launches, p50 "
                f"{p50:.0f} ms, p95 "
                f"{p95:.0f} ms, p99 {p99:.0f} ms; operator's histogram p50 "
                f"{1000 * own['p50']:.0f} ms, p99 {1000 * own['p99']:.0f} ms "
                f"({study['finished']}/{trials} trials told, {study['trials_per_s']:.1f}/s)",
                flush=True,
            )
    print(
        "\nLaunch latency (Job Complete seen -> next Job seen created)"
        " (targets: p50 <= 100 ms, p99 <= 500 ms):"
    )
    print_table(
        [
            "sampler",
            "parallelism",
            "askAhead",
            "launches",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "own p50 ms",
            "own p99 ms",
            "Job run p50 ms",
            "trials/s",
            "target",
        ],
        [
            [
                r["sampler"],
                r["parallelism"],
                r["ask_ahead"],
                r["samples"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["max_ms"],
                1000 * r["operator_histograms"]["job_launch_latency_seconds"]["p50"],
                1000 * r["operator_histograms"]["job_launch_latency_seconds"]["p99"],
                r["job_run_p50_ms"],
                r["study"]["trials_per_s"],
                "baseline" if r["baseline"] else verdict(r["target_met"]),
            ]
            for r in rows
        ],
    )
    print("Operator's own histograms per study (bucket estimates):")
    for r in rows:
        for h, v in r["operator_histograms"].items():
            print(
                f"  {r['sampler']} p{r['parallelism']} kubetune_{h}: p50 {1000 * v['p50']:.0f} "
                f"ms, p99 {1000 * v['p99']:.0f} ms, mean {1000 * v['mean']:.0f} ms over "
                f"{v['count']:.0f}"
            )
    for r in rows:
        if r["profile_top"]:
            print(f"\nWhere the operator spends CPU, {r['sampler']} p{r['parallelism']} (py-spy):")
            for function, share in r["profile_top"][:25]:
                print(f"  {share:6.1%}  {function}")
    for r in rows:
        if r["trace"]:
            _print_trace(r)
    if profile is not None and not any(r["profile_top"] for r in rows):
        print("\nNo profile: install py-spy (pip install py-spy) to sample the operator.")
    return {
        "benchmark": NAME,
        "conditions": info,
        "results": rows,
        "summary": {
            _key(r): {
                "ask_ahead": r["ask_ahead"],
                "p50_ms": r["p50_ms"],
                "p95_ms": r["p95_ms"],
                "p99_ms": r["p99_ms"],
                "operator_p50_ms": 1000
                * r["operator_histograms"]["job_launch_latency_seconds"]["p50"],
                "operator_p99_ms": 1000
                * r["operator_histograms"]["job_launch_latency_seconds"]["p99"],
                "job_run_p50_ms": r["job_run_p50_ms"],
                "target_met": r["target_met"] if not r["baseline"] else None,
            }
            for r in rows
        },
        "target": "p50 <= 100 ms, p99 <= 500 ms",
    }


def _print_trace(row: dict[str, Any]) -> None:
    t = row["trace"]
    per_pass = "ms_per_pass_that_acted"
    print(
        f"\nReconcile passes, {row['sampler']} p{row['parallelism']} (wall-clock, traced): "
        f"{t['passes']} passes, {t['passes_that_acted']} acted; acting pass p50/p95 "
        f"{t['acting_pass_p50_ms']:.0f}/{t['acting_pass_p95_ms']:.0f} ms, idle pass p50 "
        f"{t['idle_pass_p50_ms']:.0f} ms; wake-up -> pass start p50/p95 "
        f"{t['wake_to_pass_p50_ms']:.0f}/{t['wake_to_pass_p95_ms']:.0f} ms; "
        f"{t['launches_per_launching_pass_mean']:.1f} launches per launching pass"
    )
    print_table(
        ["call", "count", "p50 ms", "mean ms", "queued mean ms", "ms per acting pass"],
        [
            [k, v["count"], v["p50_ms"], v["mean_ms"], v["queued_mean_ms"], v[per_pass]]
            for k, v in t["calls"].items()
        ],
    )


def _key(row: dict[str, Any]) -> str:
    """``TPE p8``; a baseline run: ``TPE p8 askAhead 0``."""
    key = f"{row['sampler']} p{row['parallelism']}"
    return key + " askAhead 0" if row["baseline"] else key


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy and print where its CPU goes",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="time each call of the operator's reconcile passes (wall-clock, not CPU)",
    )
    p.add_argument(
        "--parallelism", type=int, default=None, help="only the runs at this parallelism"
    )
    args = p.parse_args(argv)
    profile = args.out if args.profile else None
    if profile is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    trace = None
    if args.trace:
        args.out.mkdir(parents=True, exist_ok=True)
        trace = args.out / f"{NAME}-operator-trace.jsonl"
        trace.unlink(missing_ok=True)
    result = run(size_name(args), profile=profile, trace=trace, only_parallelism=args.parallelism)
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
