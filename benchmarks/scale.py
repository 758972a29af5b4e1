"""Benchmark 3: scale, N studies x M running trials on one operator.

Each point starts a fresh emulated API, fake kubelet (instant mode) and operator process on a
fresh database of one PostgreSQL server. N studies are created with ``parallelism: M`` and
``maxTrials: 2M`` and a ``queueName``, so their Jobs are created *suspended* (as under Kueue)
and stay running until admitted; that holds N x M trial Jobs running at once. Then:

1. fill: wait until all N x M Jobs exist (every study got its slots);
2. admit: un-suspend every Job, round-robin across studies (a Kueue stand-in); the fake kubelet
   completes each at once, so the operator must tell N x M results and launch N x M more;
3. check: every study must reach M finished trials and refill its M slots (none starved).

Sampled all along: the operator's RSS (/proc), client connections to the study database
(``pg_stat_activity``); at the end the operator's ``kubetune_reconcile_duration_seconds``
histogram. Targets: RSS <= 300 MiB, <= 10 DB connections, no study starved.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    conditions,
    exit_cleanly_on_sigterm,
    parser,
    percentile,
    print_conditions,
    print_table,
    size_name,
    verdict,
    write_result,
)

NAME = "scale"
QUEUE = "bench-queue"
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"points": [(2, 2)], "timeout": 60.0},
    "short": {"points": [(3, 10), (10, 10)], "timeout": 180.0},
    "full": {"points": [(10, 50), (30, 50), (100, 50)], "timeout": 1800.0},
}


class Sampler(threading.Thread):
    """Samples operator RSS and DB connections every ``interval`` seconds."""

    def __init__(self, bench: Any, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="scale-sampler")
        self.bench = bench
        self.interval = interval
        self.rss: list[float] = []
        self.conns: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        rss = self.bench.operator_rss_mib()
        if not math.isnan(rss):
            self.rss.append(rss)
        # A sample lost (the server busy) is not a failure of the benchmark.
        with contextlib.suppress(Exception):
            self.conns.append(self.bench.db_connections())

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sample()


def _manifest(name: str, running: int, sampler: str) -> dict[str, Any]:
    from benchmarks._cluster import study_manifest

    doc = study_manifest(name, max_trials=2 * running, parallelism=running, sampler=sampler)
    doc["spec"]["trial"]["queueName"] = QUEUE
    return doc


def _suspended_jobs(bench: Any) -> list[tuple[str, str, str]]:
    """(study label, namespace, name) of Jobs still suspended, in creation order."""
    out = []
    for job in bench.api.list("jobs"):
        if (job.get("spec") or {}).get("suspend"):
            meta = job["metadata"]
            out.append(
                (meta["labels"].get("kubetune.io/study", ""), meta["namespace"], meta["name"])
            )
    return out


def _round_robin(jobs: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    by_study: dict[str, list[tuple[str, str]]] = {}
    for study, ns, name in jobs:
        by_study.setdefault(study, []).append((ns, name))
    order: list[tuple[str, str]] = []
    while any(by_study.values()):
        for queue in by_study.values():
            if queue:
                order.append(queue.pop(0))
    return order


def run_point(
    pg: Any, studies: int, running: int, timeout: float, sampler: str = "Random"
) -> dict[str, Any]:
    from benchmarks import _cluster

    names = [f"scale-{i:03d}" for i in range(studies)]
    total = studies * running
    with _cluster.emulated_cluster(pg=pg) as bench:
        _cluster.warm_up(bench)
        baseline_rss = bench.operator_rss_mib()
        probe = Sampler(bench)
        probe.start()
        assert bench.operator is not None
        op_cpu0, own_cpu0 = _cluster.cpu_seconds(bench.operator.pid), time.process_time()
        started = time.perf_counter()
        for name in names:
            bench.create_study(_manifest(name, running, sampler))

        def created() -> int:
            with bench.timeline.lock:
                return sum(len(bench.timeline.created[f"default/{n}"]) for n in names)

        filled = _cluster.wait_until(lambda: created() >= total, timeout, 0.1)
        fill_seconds = time.perf_counter() - started
        rss_full = bench.operator_rss_mib()
        admit_started = time.perf_counter()
        for ns, name in _round_robin(_suspended_jobs(bench)):
            bench.api.patch("jobs", name, {"spec": {"suspend": False}}, ns)
        progress_at: dict[str, float] = {}

        def progressed() -> bool:
            for n in names:
                if n not in progress_at and bench.finished_trials("default", n) >= running:
                    progress_at[n] = time.perf_counter() - admit_started
            return len(progress_at) == len(names)

        all_progressed = _cluster.wait_until(progressed, timeout, 0.2)
        refilled = _cluster.wait_until(lambda: created() >= 2 * total, timeout, 0.2)
        admit_seconds = time.perf_counter() - admit_started
        wall = time.perf_counter() - started
        op_cpu = _cluster.cpu_seconds(bench.operator.pid) - op_cpu0
        own_cpu = time.process_time() - own_cpu0
        probe.stop()
        bench.check_storage()
        text = _cluster.scrape(bench)
        reconcile = _cluster.histogram(text, "kubetune_reconcile_duration_seconds")
        launch = _cluster.histogram(text, "kubetune_job_launch_latency_seconds")
        finished = {n: bench.finished_trials("default", n) for n in names}
        alive = bench.operator_alive()
        tail = "" if alive else bench.log_tail()
        progress_times = sorted(progress_at.values())
    starved = [n for n in names if n not in progress_at]
    return {
        "studies": studies,
        "running_per_study": running,
        "jobs_running_at_peak": total,
        "sampler": sampler,
        "filled": filled,
        "fill_seconds": fill_seconds,
        "all_progressed": all_progressed,
        "refilled": refilled,
        "admit_to_done_seconds": admit_seconds,
        "wall_seconds": wall,
        # Who was busy: the operator process, or this one (emulated API + fake kubelet + probes).
        "operator_cpu_seconds": op_cpu,
        "harness_cpu_seconds": own_cpu,
        "trials_told_per_s": sum(finished.values()) / wall if wall > 0 else math.nan,
        "study_progress_seconds_p50": percentile(progress_times, 50),
        "study_progress_seconds_max": max(progress_times, default=math.nan),
        "starved": starved,
        "finished_min": min(finished.values(), default=0),
        "finished_max": max(finished.values(), default=0),
        "rss_mib_baseline": baseline_rss,
        "rss_mib_full": rss_full,
        "rss_mib_max": max(probe.rss, default=math.nan),
        "db_connections_max": max(probe.conns, default=0),
        "reconcile_seconds": reconcile,
        "launch_latency_seconds": launch,
        "operator_alive": alive,
        "operator_log_tail": tail,
    }


def run(size: str, pg: Any = None, out: Path | None = None) -> dict[str, Any]:
    """Run at ``size``; ``pg`` is a running ``PostgresServer`` to reuse (else one is started).

    With ``out``, each finished point is also saved to ``<out>/scale-partial.json`` at once, so
    a long full run that is stopped keeps the points it measured.
    """
    from benchmarks import _cluster  # also puts tests/ on sys.path for harness
    from harness.postgres import start_server

    cfg = SIZES[size]
    own_pg = pg is None
    pg = start_server() if own_pg else pg
    rows: list[dict[str, Any]] = []
    try:
        info = conditions(
            storage=pg.url(),
            size=size,
            points=cfg["points"],
            sampler="Random",
            operator=_cluster.OPERATOR_SETUP,
        )
        print_conditions(info)
        for studies, running in cfg["points"]:
            row = run_point(pg, studies, running, cfg["timeout"])
            rows.append(row)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                partial = {"benchmark": NAME, "conditions": info, "results": rows}
                (out / "scale-partial.json").write_text(json.dumps(partial, default=str) + "\n")
            print(
                f"  {studies} x {running}: fill {row['fill_seconds']:.1f} s, admit->done "
                f"{row['admit_to_done_seconds']:.1f} s, RSS max {row['rss_mib_max']:.0f} MiB, "
                f"DB conns max {row['db_connections_max']}, starved {len(row['starved'])}, "
                f"CPU s operator/harness {row['operator_cpu_seconds']:.0f}/"
                f"{row['harness_cpu_seconds']:.0f} over {row['wall_seconds']:.0f} s wall, "
                f"reconcile p50/p99 {1000 * row['reconcile_seconds']['p50']:.0f}/"
                f"{1000 * row['reconcile_seconds']['p99']:.0f} ms",
                flush=True,
            )
            if not row["operator_alive"]:
                print("Operator died; log tail:\n" + row["operator_log_tail"])
    finally:
        if own_pg:
            pg.cleanup()
    for row in rows:
        row["target_met"] = (
            row["rss_mib_max"] <= 300
            and row["db_connections_max"] <= 10
            and not row["starved"]
            and row["refilled"]
        )
    print("\nScale (targets: RSS <= 300 MiB, <= 10 DB connections, no study starved):")
    print_table(
        [
            "studies x running",
            "Jobs",
            "fill s",
            "RSS MiB (max)",
            "DB conns",
            "reconcile p50 ms",
            "p95 ms",
            "p99 ms",
            "starved",
            "all refilled",
            "target",
        ],
        [
            [
                f"{r['studies']} x {r['running_per_study']}",
                r["jobs_running_at_peak"],
                r["fill_seconds"],
                r["rss_mib_max"],
                r["db_connections_max"],
                1000 * r["reconcile_seconds"]["p50"],
                1000 * r["reconcile_seconds"]["p95"],
                1000 * r["reconcile_seconds"]["p99"],
                len(r["starved"]),
                r["refilled"],
                verdict(r["target_met"]),
            ]
            for r in rows
        ],
    )
    return {
        "benchmark": NAME,
        "conditions": info,
        "results": rows,
        "summary": {
            f"{r['studies']}x{r['running_per_study']}": {
                "rss_mib_max": r["rss_mib_max"],
                "db_connections_max": r["db_connections_max"],
                "reconcile_p50_ms": 1000 * r["reconcile_seconds"]["p50"],
                "reconcile_p99_ms": 1000 * r["reconcile_seconds"]["p99"],
                "starved": len(r["starved"]),
                "target_met": r["target_met"],
            }
            for r in rows
        },
        "target": "RSS <= 300 MiB, <= 10 DB connections, no study starved",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--points",
        help="override the (studies x running) points, e.g. 10x50,30x50",
    )
    args = p.parse_args(argv)
    size = size_name(args)
    if args.points:
        SIZES[size] = dict(SIZES[size])
        SIZES[size]["points"] = [
            tuple(int(v) for v in item.split("x")) for item in args.points.split(",")
        ]
    result = run(size, out=args.out)
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
