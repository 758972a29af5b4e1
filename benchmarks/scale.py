"""Benchmark 3: scale, N studies x M running trials on one operator.

Each point starts a fresh control plane (v1.32), kubelet stand-in (instant mode), recording
proxy and operator process on a fresh database of one PostgreSQL server. N studies are created
with ``parallelism: M``, ``maxTrials: 2M`` and a ``trial.queueName``, so the operator creates
their Jobs *suspended* (as under Kueue) and they stay running until admitted; that holds
N x M trial Jobs running at once. Then:

1. fill: wait until all N x M Jobs exist (every study got its slots);
2. admit: un-suspend every Job, round-robin across studies (a Kueue stand-in); the real Job
   controller makes the pods, the scheduler binds them, the kubelet stand-in completes each at
   once, so the operator must tell N x M results and launch N x M more (suspended again);
3. check: every study must reach M finished trials and refill its M slots (none starved).

Sampled all along: the operator's RSS (/proc), client connections to the study database
(``pg_stat_activity``); the proxy's log of the operator's API requests (rate, per trial, 429s);
at the end the operator's ``kubetune_reconcile_duration_seconds`` histogram and the CPU each
process used. Targets: RSS <= 300 MiB, <= 10 DB connections, no study starved, no 429 from
the apiserver.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    "smoke": {"points": [(2, 2)], "timeout": 60.0, "rest": 1.0},
    "short": {"points": [(3, 10), (10, 10)], "timeout": 180.0, "rest": 2.0},
    "full": {"points": [(10, 50), (30, 50), (100, 50)], "timeout": 1800.0, "rest": 10.0},
}


class Sampler(threading.Thread):
    """Samples operator RSS and DB connections every ``interval`` seconds.

    Every ``every`` seconds it also keeps one ``(seconds, RSS MiB, DB connections, Jobs
    created)`` point in ``series`` and prints it, so a long point that runs out of time still
    says how far it got and what it cost on the way.
    """

    def __init__(
        self,
        bench: Any,
        interval: float = 0.5,
        *,
        every: float = 30.0,
        created: Any = None,
    ) -> None:
        super().__init__(daemon=True, name="scale-sampler")
        self.bench = bench
        self.interval = interval
        self.every = every
        self.created = created
        self.rss: list[float] = []
        self.conns: list[int] = []
        self.series: list[tuple[float, float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        started = next_point = time.perf_counter()
        while not self._halt.is_set():
            self.sample()
            now = time.perf_counter()
            if self.created is not None and now >= next_point:
                next_point = now + self.every
                self.point(now - started)
            self._halt.wait(self.interval)

    def point(self, seconds: float) -> None:
        rss = self.rss[-1] if self.rss else math.nan
        conns = self.conns[-1] if self.conns else 0
        made = int(self.created())
        self.series.append((round(seconds, 1), round(rss, 1), conns, made))
        print(
            f"    t={seconds:5.0f} s: {made} Jobs created, RSS {rss:.0f} MiB "
            f"(max {max(self.rss, default=math.nan):.0f}), DB conns {conns}",
            flush=True,
        )

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
    jobs = bench.api.list("jobs", bench.namespace, label_selector="kubetune.io/study")
    jobs.sort(key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"]))
    for job in jobs:
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


def _admit(bench: Any, order: list[tuple[str, str]], workers: int = 8) -> None:
    """Un-suspend the Jobs in this order (a few requests in flight, as a queue controller)."""

    def one(item: tuple[str, str]) -> None:
        ns, name = item
        bench.api.patch("jobs", name, {"spec": {"suspend": False}}, ns)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="admit") as pool:
        list(pool.map(one, order))


def run_point(
    pg: Any,
    studies: int,
    running: int,
    timeout: float,
    *,
    rest: float = 5.0,
    sampler: str = "Random",
    cluster: Any = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """One point. ``timeout`` bounds each wait (fill, every study progressed, refill);
    ``deadline``, if given, bounds them all together, counted from the first study's creation:
    past it the point stops waiting and records how far it got (``reached``)."""
    from benchmarks import _cluster

    names = [f"scale-{i:03d}" for i in range(studies)]
    total = studies * running
    with _cluster.real_cluster(pg=pg, cluster=cluster) as bench:
        _cluster.warm_up(bench)
        time.sleep(rest)
        rss_rest_before = bench.operator_rss_mib()
        metrics_before = _cluster.scrape(bench)

        def created() -> int:
            return sum(bench.timeline.created_count(bench.study_key(n)) for n in names)

        probe = Sampler(bench, created=created)
        assert bench.operator is not None
        op_cpu0, own_cpu0 = _cluster.cpu_seconds(bench.operator.pid), time.process_time()
        plane_cpu0 = bench.control_plane_cpu_seconds()
        flow0 = _cluster.flowcontrol(bench)
        requests0 = bench.api_requests()
        started = time.perf_counter()
        probe.start()
        for name in names:
            bench.create_study(_manifest(name, running, sampler))

        def budget() -> float:
            if deadline is None:
                return timeout
            return max(0.0, min(timeout, started + deadline - time.perf_counter()))

        filled = _cluster.wait_until(lambda: created() >= total, budget(), 0.1)
        fill_seconds = time.perf_counter() - started
        requests_fill = bench.api_requests() - requests0
        rss_full = bench.operator_rss_mib()
        rss_fill_max = max(probe.rss, default=math.nan)
        conns_fill_max = max(probe.conns, default=0)
        admit_started = time.perf_counter()
        if filled or budget() > 0:
            _admit(bench, _round_robin(_suspended_jobs(bench)))
        admit_patch_seconds = time.perf_counter() - admit_started
        progress_at: dict[str, float] = {}

        def progressed() -> bool:
            with contextlib.suppress(Exception):  # a slow answer is not a starved study
                for n, finished in bench.finished_by_study().items():
                    if n in names and n not in progress_at and finished >= running:
                        progress_at[n] = time.perf_counter() - admit_started
            return len(progress_at) == len(names)

        all_progressed = _cluster.wait_until(progressed, budget(), 0.5)
        refilled = _cluster.wait_until(lambda: created() >= 2 * total, budget(), 0.2)
        admit_seconds = time.perf_counter() - admit_started
        wall = time.perf_counter() - started
        op_cpu = _cluster.cpu_seconds(bench.operator.pid) - op_cpu0
        own_cpu = time.process_time() - own_cpu0
        plane_cpu1 = bench.control_plane_cpu_seconds()
        requests = bench.api_requests() - requests0
        request_counts = bench.api_request_counts(requests0)
        flow = _cluster.flowcontrol_delta(flow0, _cluster.flowcontrol(bench))
        time.sleep(rest)
        probe.stop()
        rss_rest_after = bench.operator_rss_mib()
        bench.check_storage()
        text = _cluster.scrape(bench)
        reconcile = _cluster.histogram(
            text, "kubetune_reconcile_duration_seconds", minus=metrics_before
        )
        launch = _cluster.histogram(
            text, "kubetune_job_launch_latency_seconds", minus=metrics_before
        )
        finished = {n: bench.finished_trials(n) for n in names}
        alive = bench.operator_alive()
        tail = "" if alive else bench.log_tail()
        progress_times = sorted(progress_at.values())
        made = created()
    starved = [n for n in names if n not in progress_at]
    told = sum(finished.values())
    return {
        "studies": studies,
        "running_per_study": running,
        "jobs_running_at_peak": total,
        "sampler": sampler,
        "deadline_seconds": deadline,
        "reached": _reached(
            filled=filled,
            progressed=all_progressed,
            refilled=refilled,
            made=made,
            told=told,
            total=total,
            short=len(starved),
        ),
        "filled": filled,
        "fill_seconds": fill_seconds,
        "all_progressed": all_progressed,
        "refilled": refilled,
        "admit_patch_seconds": admit_patch_seconds,
        "admit_to_done_seconds": admit_seconds,
        "wall_seconds": wall,
        "jobs_created": made,
        "trials_told": told,
        # Who was busy: the operator, the control plane, or this process (kubelet stand-in,
        # proxy, watches, probes).
        "operator_cpu_seconds": op_cpu,
        "harness_cpu_seconds": own_cpu,
        "control_plane_cpu_seconds": {
            k: plane_cpu1.get(k, math.nan) - v for k, v in plane_cpu0.items()
        },
        "trials_told_per_s": told / wall if wall > 0 else math.nan,
        "api_requests": requests,
        "api_requests_fill": requests_fill,
        "api_requests_per_s": requests / wall if wall > 0 else math.nan,
        "api_requests_per_trial": requests / made if made else math.nan,
        "api_request_counts": request_counts,
        "api_429": request_counts.get("status 429", 0),
        # Everyone's requests (operator, control plane, benchmark) per priority level.
        "apiserver_flowcontrol": flow,
        "study_progress_seconds_p50": percentile(progress_times, 50),
        "study_progress_seconds_max": max(progress_times, default=math.nan),
        "starved": starved,
        "finished_min": min(finished.values(), default=0),
        "finished_max": max(finished.values(), default=0),
        "rss_mib_baseline": rss_rest_before,
        "rss_mib_full": rss_full,
        "rss_mib_max_before_admit": rss_fill_max,
        "db_connections_max_before_admit": conns_fill_max,
        "series_seconds_rss_conns_jobs": probe.series,
        "rss_mib_max": max(probe.rss, default=math.nan),
        "rss_mib_rest_after": rss_rest_after,
        "db_connections_max": max(probe.conns, default=0),
        "reconcile_seconds": reconcile,
        "launch_latency_seconds": launch,
        "operator_alive": alive,
        "operator_log_tail": tail,
    }


def _reached(
    *, filled: bool, progressed: bool, refilled: bool, made: int, told: int, total: int, short: int
) -> str:
    """How far a point got, in words: all of it, or where it stopped."""
    if filled and progressed and refilled:
        return "complete"
    if not filled:
        return f"stopped while filling: {made} of {total} Jobs created"
    return (
        f"stopped after admission: {told} of {total} results told, {made} of {2 * total} Jobs "
        f"created, {short} studies short of their first wave's results"
    )


def run(
    size: str,
    pg: Any = None,
    out: Path | None = None,
    cluster: Any = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run at ``size``; ``pg`` is a running ``PostgresServer`` to reuse (else one is started),
    ``cluster`` the tests' running cluster (else each point starts a control plane of its own),
    ``deadline`` the seconds each point may take from its first study on (see ``run_point``).

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
            control_plane_qps=_cluster.CONTROL_PLANE_QPS if cluster is None else None,
            queue_name=QUEUE,
            deadline_seconds_per_point=deadline,
            operator_identity=_cluster.OPERATOR_IDENTITY if cluster is None else "admin",
        )
        print_conditions(info)
        for studies, running in cfg["points"]:
            row = run_point(
                pg,
                studies,
                running,
                cfg["timeout"],
                rest=cfg["rest"],
                cluster=cluster,
                deadline=deadline,
            )
            row["load_average_1m_5m_at_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
            rows.append(row)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                partial = {"benchmark": NAME, "conditions": info, "results": rows}
                (out / "scale-partial.json").write_text(json.dumps(partial, default=str) + "\n")
            print(
                f"  {studies} x {running}: fill {row['fill_seconds']:.1f} s, admit->done "
                f"{row['admit_to_done_seconds']:.1f} s, RSS max {row['rss_mib_max']:.0f} MiB "
                f"(rest {row['rss_mib_baseline']:.0f} -> {row['rss_mib_rest_after']:.0f}), "
                f"DB conns max {row['db_connections_max']}, starved {len(row['starved'])}, "
                f"API {row['api_requests_per_s']:.1f} req/s, "
                f"{row['api_requests_per_trial']:.1f} req/Job, 429s {row['api_429']}, "
                f"CPU s operator/harness {row['operator_cpu_seconds']:.0f}/"
                f"{row['harness_cpu_seconds']:.0f} over {row['wall_seconds']:.0f} s wall, "
                f"reconcile p50/p99 {1000 * row['reconcile_seconds']['p50']:.0f}/"
                f"{1000 * row['reconcile_seconds']['p99']:.0f} ms",
                flush=True,
            )
            if row["reached"] != "complete":
                print(f"  {studies} x {running}: {row['reached']}", flush=True)
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
            and row["api_429"] == 0
        )
    print("\nScale (targets: RSS <= 300 MiB, <= 10 DB connections, no study starved, no 429):")
    print_table(
        [
            "studies x running",
            "Jobs",
            "fill s",
            "RSS MiB max",
            "rest before/after",
            "DB conns",
            "API req/s",
            "req/Job",
            "429s",
            "reconcile p50 ms",
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
                f"{r['rss_mib_baseline']:.0f}/{r['rss_mib_rest_after']:.0f}",
                r["db_connections_max"],
                r["api_requests_per_s"],
                r["api_requests_per_trial"],
                r["api_429"],
                1000 * r["reconcile_seconds"]["p50"],
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
                "rss_mib_rest_before": r["rss_mib_baseline"],
                "rss_mib_rest_after": r["rss_mib_rest_after"],
                "db_connections_max": r["db_connections_max"],
                "fill_seconds": r["fill_seconds"],
                "admit_to_done_seconds": r["admit_to_done_seconds"],
                "api_requests_per_s": r["api_requests_per_s"],
                "api_requests_per_job": r["api_requests_per_trial"],
                "api_429": r["api_429"],
                "reconcile_p50_ms": 1000 * r["reconcile_seconds"]["p50"],
                "reconcile_p99_ms": 1000 * r["reconcile_seconds"]["p99"],
                "starved": len(r["starved"]),
                "target_met": r["target_met"],
                "reached": r["reached"],
                "jobs_created": r["jobs_created"],
                "trials_told": r["trials_told"],
                "rss_mib_max_before_admit": r["rss_mib_max_before_admit"],
                "load_average_1m_5m_at_end": r["load_average_1m_5m_at_end"],
                "apiserver_rejected": sum(
                    v.get("rejected", 0) for v in r["apiserver_flowcontrol"].values()
                ),
            }
            for r in rows
        },
        "target": "RSS <= 300 MiB, <= 10 DB connections, no study starved, no 429",
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exit_cleanly_on_sigterm()
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--points",
        help="override the (studies x running) points, e.g. 10x50,30x50",
    )
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds each point may run from its first study on; past it the point stops "
        "waiting and records how far it got",
    )
    args = p.parse_args(argv)
    size = size_name(args)
    if args.points:
        SIZES[size] = dict(SIZES[size])
        SIZES[size]["points"] = [
            tuple(int(v) for v in item.split("x")) for item in args.points.split(",")
        ]
    result = run(size, out=args.out, deadline=args.deadline)
    path = write_result(args.out, NAME, result)
    print(f"\nResult written to {path}")
    return result


if __name__ == "__main__":
    main()
