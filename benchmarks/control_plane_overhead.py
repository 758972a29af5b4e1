"""Benchmark 1: per-trial control-plane overhead, the operator path against raw Optuna.

Zero-work trials, the same PostgreSQL server, the same search space and sampler (TPE and
Random, built from the manifest by ``kubetune.sampling``):

- floor: raw Optuna ask + suggest + tell in one process, one trial after another;
- operator: the real operator (``kopf run -m kubetune.handlers`` in its own process) against
  the real control plane (v1.32), with the kubelet stand-in in instant mode (a Job's pod ends
  at once with a termination message, the real Job controller completes the Job); per trial
  that is an Optuna ask, a Job create, the Job and pod watch events, a tell, and status
  patches.

Both figures are trials/s from the study's creation until every trial is told. Target: the
operator reaches >= 50 % of raw Optuna's rate. On a 2-core machine etcd, the apiserver, the
controller manager, the scheduler, the kubelet stand-in, PostgreSQL and the operator all share
the cores, which the raw floor does not pay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import optuna
import yaml

from benchmarks._common import (
    conditions,
    exit_cleanly_on_sigterm,
    parser,
    print_conditions,
    print_table,
    size_name,
    verdict,
    write_result,
)

NAME = "control_plane_overhead"
#: PostgreSQL 15 publishes a busy backend's statistics at most every 10 s.
STATS_FLUSH_SECONDS = 11.0
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 4, "parallelism": 2, "samplers": ["Random"]},
    "short": {"trials": 80, "parallelism": 8, "samplers": ["TPE", "Random"]},
    "full": {"trials": 500, "parallelism": 8, "samplers": ["TPE", "Random"]},
}


def raw_optuna(storage_url: str, *, trials: int, parallelism: int, sampler: str) -> dict[str, Any]:
    """The floor: ask + suggest + tell against PostgreSQL in one process."""
    from benchmarks._cluster import study_manifest, zero_work
    from kubetune.sampling import directions, make_sampler
    from kubetune.search_space import param_env, suggest_params
    from kubetune.spec import load_manifest

    doc = study_manifest(
        f"raw-{sampler.lower()}", max_trials=trials, parallelism=parallelism, sampler=sampler
    )
    spec = load_manifest(yaml.safe_dump(doc)).spec
    storage = optuna.storages.RDBStorage(storage_url)
    started = time.perf_counter()
    cpu_started = time.thread_time()
    study = optuna.create_study(
        storage=storage,
        study_name=f"raw-{sampler.lower()}-{time.time_ns()}",
        sampler=make_sampler(spec),
        directions=directions(spec),
    )
    for _ in range(trials):
        trial = study.ask()
        params = suggest_params(trial, spec)
        env = [{"name": k, "value": v} for k, v in param_env(params).items()]
        message = zero_work({"spec": {"containers": [{"env": env}]}})
        study.tell(trial, yaml.safe_load(message)["values"][0])
    elapsed = time.perf_counter() - started
    cpu = time.thread_time() - cpu_started
    storage.engine.dispose()
    return {
        "sampler": sampler,
        "trials": trials,
        "seconds": elapsed,
        "trials_per_s": trials / elapsed,
        "cpu_ms_per_trial": 1000 * cpu / trials,
    }


def _per_trial(a: dict[str, int], b: dict[str, int], trials: int) -> dict[str, float]:
    return {k: (b[k] - a[k]) / trials if trials else math.nan for k in a}


def run(size: str, pg: Any = None, cluster: Any = None) -> dict[str, Any]:
    """Run at ``size``; ``pg`` is a running ``PostgresServer`` to reuse (else one is started),
    ``cluster`` the tests' running cluster (else a control plane of its own is started)."""
    from benchmarks import _cluster

    cfg = SIZES[size]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[dict[str, Any]] = []
    with _cluster.real_cluster(pg=pg, cluster=cluster) as bench:
        info = conditions(
            storage=bench.storage_url,
            size=size,
            trials=cfg["trials"],
            parallelism=cfg["parallelism"],
            operator=_cluster.OPERATOR_SETUP,
            control_plane_qps=_cluster.CONTROL_PLANE_QPS if cluster is None else None,
        )
        print_conditions(info)
        _cluster.warm_up(bench)
        for sampler in cfg["samplers"]:
            # Raw Optuna before and after the operator run, averaged: the load of a shared
            # machine drifts, and the ratio should not depend on which phase it hit.
            def floor(sampler: str = sampler) -> dict[str, Any]:
                return raw_optuna(
                    bench.storage_url,
                    trials=cfg["trials"],
                    parallelism=cfg["parallelism"],
                    sampler=sampler,
                )

            s0 = bench.db_stats()
            before = floor()  # disposes its engine: its backends exit and flush their stats
            time.sleep(1.0)
            s1 = bench.db_stats()
            op = _cluster.run_study(
                bench,
                f"overhead-{sampler.lower()}",
                trials=cfg["trials"],
                parallelism=cfg["parallelism"],
                sampler=sampler,
                timeout=max(60.0, cfg["trials"] * 2.0),
            )
            time.sleep(STATS_FLUSH_SECONDS if size != "smoke" else 0.0)
            s2 = bench.db_stats()
            raw_runs = [before, floor()]
            db = {
                "raw_per_trial": _per_trial(s0, s1, cfg["trials"]),
                "operator_per_trial": _per_trial(s1, s2, op["finished"]),
            }
            raw = {
                "sampler": sampler,
                "trials": cfg["trials"],
                "trials_per_s": sum(r["trials_per_s"] for r in raw_runs) / len(raw_runs),
                "cpu_ms_per_trial": sum(r["cpu_ms_per_trial"] for r in raw_runs) / len(raw_runs),
                "runs": raw_runs,
            }
            bench.check_storage()
            ratio = op["trials_per_s"] / raw["trials_per_s"]
            rows.append({"sampler": sampler, "raw": raw, "operator": op, "ratio": ratio, "db": db})
            print(
                f"  {sampler}: raw {raw['trials_per_s']:.1f} trials/s, operator "
                f"{op['trials_per_s']:.2f} trials/s ({op['finished']}/{cfg['trials']} told), "
                f"ratio {ratio:.1%}",
                flush=True,
            )
        if not bench.operator_alive():
            print("Operator died; log tail:\n" + bench.log_tail())
    print(
        f"\nControl-plane overhead, {cfg['trials']} zero-work trials, parallelism "
        f"{cfg['parallelism']} (target: operator >= 50 % of raw Optuna):"
    )
    print_table(
        [
            "sampler",
            "raw trials/s",
            "operator trials/s",
            "ratio",
            "CPU ms/trial raw/op",
            "API req/trial",
            "DB commits/trial raw/op",
            "rows read/trial raw/op",
            "target",
        ],
        [
            [
                r["sampler"],
                r["raw"]["trials_per_s"],
                r["operator"]["trials_per_s"],
                f"{r['ratio']:.1%}",
                f"{r['raw']['cpu_ms_per_trial']:.0f} / "
                f"{r['operator']['operator_cpu_ms_per_trial']:.0f}",
                r["operator"]["api_requests_per_trial"],
                f"{r['db']['raw_per_trial']['xact_commit']:.1f} / "
                f"{r['db']['operator_per_trial']['xact_commit']:.1f}",
                f"{r['db']['raw_per_trial']['tup_returned']:.0f} / "
                f"{r['db']['operator_per_trial']['tup_returned']:.0f}",
                verdict(r["ratio"] >= 0.5 and r["operator"]["done"]),
            ]
            for r in rows
        ],
    )
    return {
        "benchmark": NAME,
        "conditions": info,
        "results": rows,
        "summary": {
            r["sampler"]: {
                "raw_trials_per_s": r["raw"]["trials_per_s"],
                "operator_trials_per_s": r["operator"]["trials_per_s"],
                "ratio": r["ratio"],
                "raw_cpu_ms_per_trial": r["raw"]["cpu_ms_per_trial"],
                "operator_cpu_ms_per_trial": r["operator"]["operator_cpu_ms_per_trial"],
                "target_met": r["ratio"] >= 0.5 and r["operator"]["done"],
            }
            for r in rows
        },
        "target": "operator trials/s >= 50 % of raw Optuna ask+tell",
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
