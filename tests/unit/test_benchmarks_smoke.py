"""The benchmarks must not rot: run each one's smallest configuration and check its result.

No timing is asserted (figures depend on the machine); what is checked is that every script
runs end to end, prints and writes a parseable result with its conditions, and that the
figures it computes are consistent (every trial told, every launch paired, no study starved).
The operator benchmarks run on the session's real control plane (``cluster`` fixture), with
the kubelet stand-in in instant mode, instead of starting a control plane of their own.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _common  # noqa: E402

CONDITION_KEYS = {"date", "machine", "cpu_count", "python", "optuna", "torch", "storage"}


def _written(out: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert set(result["conditions"]) >= CONDITION_KEYS
    assert result["benchmark"] == name
    return result


# ---- pure helpers ---------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert _common.percentile(values, 50) == 3.0
    assert _common.percentile(values, 0) == 1.0
    assert _common.percentile(values, 100) == 5.0
    assert _common.percentile(values, 25) == 2.0
    assert _common.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(_common.percentile([], 50))


def test_results_are_strict_json_without_secrets(tmp_path: Path) -> None:
    path = _common.write_result(tmp_path, "x", {"nan": math.nan, "nested": [math.inf, 1.0]})
    assert json.loads(path.read_text()) == {"nan": None, "nested": [None, 1.0]}
    assert len(list(tmp_path.glob("x-*.json"))) == 1
    kind = _common.storage_kind("postgresql+psycopg2://kubetune:hunter2@127.0.0.1:5/db")
    assert "hunter2" not in kind and kind.startswith("postgresql+psycopg2")


def test_histogram_quantiles_follow_prometheus() -> None:
    from benchmarks import _cluster

    text = "\n".join(
        [
            "# TYPE h histogram",
            'h_bucket{le="0.1",s="a"} 5',
            'h_bucket{le="1.0",s="a"} 10',
            'h_bucket{le="+Inf",s="a"} 10',
            'h_sum{s="a"} 3.0',
            'h_count{s="a"} 10',
            'h_bucket{le="0.1",s="b"} 5',
            'h_bucket{le="1.0",s="b"} 10',
            'h_bucket{le="+Inf",s="b"} 10',
            'h_sum{s="b"} 3.0',
            'h_count{s="b"} 10',
        ]
    )
    h = _cluster.histogram(text, "h")
    assert h["count"] == 20 and h["mean"] == pytest.approx(0.3)
    assert h["p50"] == pytest.approx(0.1)  # rank 10 of 20 sits on the first bucket's edge
    assert h["p95"] == pytest.approx(0.1 + 0.9 * (19 - 10) / 10)
    assert math.isnan(_cluster.histogram("", "h")["p50"])
    earlier = text.replace('le="1.0",s="a"} 10', 'le="1.0",s="a"} 5').replace(
        'le="+Inf",s="a"} 10', 'le="+Inf",s="a"} 5'
    )
    earlier = earlier.replace('h_count{s="a"} 10', 'h_count{s="a"} 5')
    since = _cluster.histogram(text, "h", minus=earlier)
    assert since["count"] == 5 and since["p50"] > 0.1  # only the five slow observations


def test_launch_latency_pairs_the_kth_completion_with_job_k_plus_parallelism() -> None:
    from benchmarks._cluster import Timeline

    t = Timeline()
    t.created["ns/s"] = [0.0, 0.0, 1.2, 2.5]
    t.completed["ns/s"] = [1.0, 2.0, 3.0, 4.0]
    assert t.launch_latencies(2, "ns/s") == pytest.approx([0.2, 0.5])


def test_timeline_counts_each_job_once_across_relists() -> None:
    from benchmarks._cluster import Timeline

    def job(name: str, complete: bool) -> dict[str, Any]:
        conds = [{"type": "Complete", "status": "True"}] if complete else []
        meta = {"name": name, "namespace": "ns", "labels": {"kubetune.io/study": "s"}}
        return {"metadata": meta, "status": {"conditions": conds}}

    t = Timeline()
    for kind, obj in [
        ("ADDED", job("s-0", False)),
        ("MODIFIED", job("s-0", True)),
        ("ADDED", job("s-0", True)),  # a relist after 410 Gone repeats what exists
        ("MODIFIED", job("s-0", True)),
        ("ADDED", job("s-1", False)),
    ]:
        t.on_job(kind, obj)
    assert len(t.created["ns/s"]) == 2 and len(t.completed["ns/s"]) == 1
    assert t.created_count("ns/s") == 2
    (run,) = t.job_seconds["ns/s"]
    assert run == pytest.approx(t.completed["ns/s"][0] - t.created["ns/s"][0])


def test_scale_admits_round_robin_across_studies() -> None:
    from benchmarks.scale import _round_robin

    jobs = [("a", "ns", "a-0"), ("a", "ns", "a-1"), ("a", "ns", "a-2"), ("b", "ns", "b-0")]
    assert _round_robin(jobs) == [("ns", "a-0"), ("ns", "b-0"), ("ns", "a-1"), ("ns", "a-2")]


def test_scale_says_how_far_a_point_got() -> None:
    from benchmarks.scale import _reached

    args = {"made": 10, "told": 0, "total": 10, "short": 2}
    assert _reached(filled=True, progressed=True, refilled=True, **args) == "complete"
    assert _reached(filled=False, progressed=False, refilled=False, **{**args, "made": 7}) == (
        "stopped while filling: 7 of 10 Jobs created"
    )
    assert _reached(filled=True, progressed=False, refilled=False, **{**args, "told": 4}) == (
        "stopped after admission: 4 of 10 results told, 10 of 20 Jobs created, 2 studies "
        "short of their first wave's results"
    )


def test_metrics_port_comes_from_the_start_of_a_long_log(tmp_path: Path) -> None:
    """At 100 x 50 the operator's log passed 10 MB: the port must still be found, and a
    failed final scrape must not subtract into negative counts."""
    from types import SimpleNamespace

    from benchmarks import _cluster

    log = tmp_path / "operator.log"
    with log.open("w") as out:
        out.write("[t] kubetune.operator [INFO] Started ports={'metrics': 41234, 'report': 5}\n")
        out.write("[t] kopf.objects [INFO] [default/s-1] Handler 'job_event' succeeded\n" * 160_000)
    assert log.stat().st_size > 10**7
    assert _cluster.metrics_port(SimpleNamespace(operator_log=log)) == 41234
    assert _cluster.metrics_port(SimpleNamespace(operator_log=tmp_path / "none")) is None
    before = "\n".join(
        [
            "# TYPE h histogram",
            'h_bucket{le="1.0"} 4',
            'h_bucket{le="+Inf"} 4',
            "h_sum 2",
            "h_count 4",
        ]
    )
    lost = _cluster.histogram("", "h", minus=before)
    assert lost["count"] == 0 and math.isnan(lost["p50"])


def test_flowcontrol_delta_keeps_what_changed_per_priority_level() -> None:
    from benchmarks import _cluster

    before = {"exempt": {"dispatched": 10.0}, "workload-low": {"dispatched": 5.0}}
    after = {
        "exempt": {"dispatched": 10.0},
        "workload-low": {"dispatched": 9.0, "rejected": 2.0},
        "global-default": {"dispatched": 1.0},
    }
    assert _cluster.flowcontrol_delta(before, after) == {
        "workload-low": {"dispatched": 4.0, "rejected": 2.0},
        "global-default": {"dispatched": 1.0},
    }


def _run_all_module() -> Any:
    import importlib.machinery
    import types

    loader = importlib.machinery.SourceFileLoader("run_all", str(REPO / "benchmarks" / "run_all"))
    module = types.ModuleType(loader.name)
    module.__file__ = loader.path
    loader.exec_module(module)
    return module


def test_run_all_adds_scale_points_beside_the_others() -> None:
    run_all = _run_all_module()
    point = {"rss_mib_max": 150.0, "starved": 0, "target_met": True}
    old = {"exit_code": 0, "size": "short", "conditions": {"date": "a"}, "summary": {"3x10": point}}
    far = {**point, "rss_mib_max": 400.0, "target_met": False, "reached": "stopped while x"}
    new = {
        "exit_code": 0,
        "size": "full",
        "wall_seconds": 9.0,
        "conditions": {"date": "b"},
        "summary": {"100x50": far},
    }
    merged = run_all._merge_points(old, new)
    assert merged["conditions"] == {"date": "a"} and merged["size"] == "short"
    assert merged["summary"]["3x10"] == point
    assert merged["summary"]["100x50"]["conditions"] == {"date": "b"}
    assert merged["summary"]["100x50"]["size"] == "full"
    # A failed run leaves the entry as it was; with no entry before, the run's own is kept.
    assert run_all._merge_points(old, {**new, "exit_code": 1}) is old
    assert run_all._merge_points(None, new) is new
    table = run_all.markdown_table({"benchmarks": {"scale": merged}})
    row_3x10, row_100x50 = (line for line in table.splitlines() if "Scale" in line)
    assert "(full)" not in row_3x10 and row_3x10.endswith("| met |")
    assert "100 studies x 50 running *(full)*" in row_100x50
    assert "**not finished** (stopped while x)" in row_100x50
    assert row_100x50.endswith("| **missed** |")


# ---- the benchmarks, smallest size ----------------------------------------------------------


def test_trainer_throughput_smoke(tmp_path: Path) -> None:
    from benchmarks import trainer_throughput

    trainer_throughput.main(["--smoke", "--out", str(tmp_path)])
    result = _written(tmp_path, "trainer_throughput")
    (row,) = result["results"]
    assert row["samples_per_s"] > 0 and row["samples"] > 0 and row["device"] == "cpu"
    startup = result["process_startup"]
    assert startup["exit_code"] == 0, startup["stderr_tail"]
    assert startup["termination_message"]["values"][0] > 0


def test_pruning_savings_smoke(tmp_path: Path) -> None:
    from benchmarks import pruning_savings

    pruning_savings.main(["--smoke", "--out", str(tmp_path)])
    result = _written(tmp_path, "pruning_savings")
    assert {r["pruner"] for r in result["runs"]} == {"None", "Median", "Hyperband"}
    for run in result["runs"]:
        assert run["trials"] == 4 and run["failed"] == 0
        assert run["complete"] + run["pruned"] == 4
        assert 0 < run["best_value"] <= 1 and run["epochs"] >= 4
    assert result["summary"]["None"]["seconds_saved_mean"] == 0


def test_ledger_snapshot_smoke(fresh_database: str, tmp_path: Path) -> None:
    from benchmarks import ledger_snapshot

    ledger_snapshot.main(["--smoke", "--out", str(tmp_path)], url=fresh_database)
    result = _written(tmp_path, "ledger_snapshot")
    (point,) = result["points"]
    assert point["finished"] == 200 and point["running"] == 50
    for pass_kind in ("idle", "busy"):
        for read in ("full", "incremental"):
            assert point[f"{pass_kind}_{read}_p50_ms"] > 0


def test_large_study_smoke(fresh_database: str, tmp_path: Path) -> None:
    import gc

    from benchmarks import large_study

    from kubetune.runtime import GC_THRESHOLDS

    before = gc.get_threshold()
    large_study.main(["--smoke", "--out", str(tmp_path)], url=fresh_database)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # undone after
    result = _written(tmp_path, "large_study")
    # The operator side ran with the collector as the operator sets it.
    assert result["conditions"]["gc_thresholds"] == list(GC_THRESHOLDS)
    (point,) = result["points"]
    assert point["finished"] == 50 and point["window"] == 4 and point["passes_per_trial"] == 3
    assert point["raw_p50_ms"] > 0 and point["operator_p50_ms"] > 0 and point["ratio"] > 0
    assert point["jobs_in_index"] == 50 + 8 + 3 + 4  # finished, slots, warm-up, window
    assert {"observe", "snapshot", "decide", "ask", "mark_job_created"} <= set(
        point["steps_ms_per_trial"]
    )
    assert {(s["trials"], s["objectives"]) for s in result["status"]} == {(1000, 1), (1000, 2)}
    for status in result["status"]:
        assert status["status_bytes"] > 0 and status["decide_p50_ms"] > 0
    assert result["summary"]["status 2 objectives"]["points"]["1000"]["pareto_listed"] == 20


def test_run_all_writes_the_summary(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run_all"),
            "--smoke",
            "--only",
            "trainer_throughput",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "latest.json").read_text())
    entry = summary["benchmarks"]["trainer_throughput"]
    assert entry["exit_code"] == 0 and entry["summary"]["trial_startup_seconds"] is not None
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all"), "--only", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr


@pytest.mark.slow
def test_control_plane_overhead_smoke(postgres_server: Any, cluster: Any) -> None:
    from benchmarks import control_plane_overhead

    result = control_plane_overhead.run("smoke", pg=postgres_server, cluster=cluster)
    (row,) = result["results"]
    assert row["operator"]["done"], row
    assert row["operator"]["finished"] == row["raw"]["trials"] == 4
    assert row["raw"]["trials_per_s"] > 0 and row["ratio"] > 0
    assert row["raw"]["cpu_ms_per_trial"] > 0
    assert 0 < row["operator"]["db_connections"] <= 10


@pytest.mark.slow
def test_launch_latency_smoke(postgres_server: Any, cluster: Any) -> None:
    from benchmarks import launch_latency

    result = launch_latency.run("smoke", pg=postgres_server, cluster=cluster)
    (row,) = result["results"]
    assert row["study"]["finished"] == 6
    assert row["samples"] == 6 - 2  # every freed slot but the last two was refilled
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["job_run_p50_ms"] > 0
    # The operator's own histogram counts this study's launches only.
    assert row["operator_histograms"]["job_launch_latency_seconds"]["count"] == 6
    assert row["study"]["api_requests"].get("create jobs") == 6


@pytest.mark.slow
def test_scale_smoke(postgres_server: Any, cluster: Any) -> None:
    from benchmarks import scale

    result = scale.run("smoke", pg=postgres_server, cluster=cluster)
    (row,) = result["results"]
    assert row["filled"] and row["all_progressed"] and row["refilled"], row["operator_log_tail"]
    assert row["starved"] == [] and row["finished_min"] >= 2
    assert row["jobs_created"] == 2 * 2 * 2  # two waves of 2 x 2, the second held suspended
    assert row["rss_mib_max"] > 0 and row["db_connections_max"] >= 1
    assert row["api_requests_per_trial"] > 0 and row["api_429"] == 0
