"""An emulated cluster for the operator benchmarks: PostgreSQL, API server, fake kubelet, kopf.

Everything is the project's own test harness (``tests/harness``): a real PostgreSQL, the
emulated Kubernetes API over HTTP, the fake kubelet in *instant* mode (no process runs: a pod
ends at once with a termination message), and the real operator (``kopf run -m
kubetune.handlers``) in its own process, as in a cluster, so its RSS and CPU are its own.

A store listener records, with ``time.perf_counter``, when each trial Job is created and when
the fake kubelet marks it Complete -- the API's own timestamps have one-second precision.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, rss_mib

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from harness.apiserver import EmulatedApi
from harness.kubelet import FakeKubelet
from harness.postgres import PostgresServer, start_server

JOBS = "jobs.batch"
STUDY_LABEL = "kubetune.io/study"
TOKEN_KEY = "benchmark-token-key-0123456789abcdef"


#: How the operator benchmarks run the operator, printed with their conditions.
OPERATOR_SETUP = "kopf run -m kubetune.handlers (own process), emulated API, instant kubelet"


def zero_work(pod: Mapping[str, Any]) -> str:
    """The instant trial: a deterministic value from its parameters, no work at all."""
    env = {
        e.get("name"): e.get("value")
        for e in (pod.get("spec") or {}).get("containers", [{}])[0].get("env") or []
    }
    x = float(env.get("KUBETUNE_PARAM_X", "0") or 0)
    y = float(env.get("KUBETUNE_PARAM_Y", "0") or 0)
    return json.dumps({"values": [(x - 0.3) ** 2 + (y - 0.7) ** 2]})


def study_manifest(
    name: str,
    *,
    namespace: str = "default",
    max_trials: int,
    parallelism: int,
    sampler: str = "TPE",
    seed: int = 0,
) -> dict[str, Any]:
    """A two-parameter study with zero-work trials (result by termination message)."""
    sampler_block: dict[str, Any] = {"type": sampler, "seed": seed}
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objectives": [{"name": "loss", "direction": "minimize"}],
            "searchSpace": [
                {"name": "x", "float": {"low": 0.0, "high": 1.0}},
                {"name": "y", "float": {"low": 0.0, "high": 1.0}},
            ],
            "sampler": sampler_block,
            "budget": {"maxTrials": max_trials, "parallelism": parallelism},
            "trial": {
                "result": {"from": "TerminationMessage"},
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "trial", "image": "zero-work:1", "command": ["true"]}
                        ]
                    }
                },
            },
        },
    }


@dataclass
class Timeline:
    """Per study: perf_counter times of Job creations and of Jobs turning Complete."""

    created: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    completed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def listener(self, key: str, kind: str, obj: Mapping[str, Any], old: Any) -> None:
        if key != JOBS:
            return
        now = time.perf_counter()
        meta = obj.get("metadata") or {}
        study = f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(STUDY_LABEL)}"
        if kind == "ADDED":
            with self.lock:
                self.created[study].append(now)
        elif kind == "MODIFIED" and _complete(obj) and not (old and _complete(old)):
            with self.lock:
                self.completed[study].append(now)

    def launch_latencies(self, parallelism: int, study: str | None = None) -> list[float]:
        """Slot freed -> Job created: the k-th completion refills slot k+parallelism (FIFO).

        ``study`` is ``namespace/name``; all studies when None.
        """
        out: list[float] = []
        with self.lock:
            for key, done in self.completed.items():
                if study is not None and key != study:
                    continue
                made = self.created.get(key, [])
                for k, t_done in enumerate(done):
                    if k + parallelism < len(made):
                        out.append(made[k + parallelism] - t_done)
        return out


def _complete(obj: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


@dataclass
class Bench:
    """One running set-up; see :func:`emulated_cluster`."""

    pg: PostgresServer
    database: str
    api: EmulatedApi
    kubelet: FakeKubelet
    timeline: Timeline
    workdir: Path
    operator: subprocess.Popen[bytes] | None = None
    operator_log: Path | None = None

    @property
    def storage_url(self) -> str:
        return str(self.pg.url(self.database))

    def start_operator(self, extra_env: Mapping[str, str] | None = None) -> None:
        """``python -m kopf run --standalone -A -m kubetune.handlers`` in its own process."""
        kubeconfig = self.api.write_kubeconfig(self.workdir / "kubeconfig.yaml")
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_STORAGE_URL": self.storage_url,
            "KUBETUNE_TOKEN_KEY": TOKEN_KEY,
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_REPORT_PORT": "0",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]
            ),
            **(extra_env or {}),
        }
        self.operator_log = self.workdir / "operator.log"
        with self.operator_log.open("ab") as log:
            self.operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--standalone",
                    "-A",
                    "-m",
                    "kubetune.handlers",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def operator_rss_mib(self) -> float:
        if self.operator is None or self.operator.poll() is not None:
            return math.nan
        return rss_mib(self.operator.pid)

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        if self.operator_log is None or not self.operator_log.exists():
            return ""
        return self.operator_log.read_text(errors="replace")[-chars:]

    def stop_operator(self) -> None:
        if self.operator is None or self.operator.poll() is not None:
            return
        self.operator.terminate()
        try:
            self.operator.wait(15)
        except subprocess.TimeoutExpired:
            self.operator.kill()
            self.operator.wait(5)

    def db_connections(self) -> int:
        """Client connections to the benchmark's database (``pg_stat_activity``)."""
        with contextlib.closing(self.pg.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (self.database,),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def check_storage(self) -> None:
        """Raise when the PostgreSQL server has gone (killed from outside the benchmark)."""
        if not self.pg.is_running():
            raise RuntimeError(
                f"PostgreSQL (port {self.pg.port}) stopped during the benchmark; figures after "
                "this point would measure an operator retrying a dead storage"
            )

    def db_stats(self) -> dict[str, int]:
        """Cumulative transaction and row counters of the benchmark's database.

        PostgreSQL 15 flushes a busy backend's counters at most every 10 s: wait that long
        after a phase before reading them for it.
        """
        cols = ("xact_commit", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")
        with contextlib.closing(self.pg.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {', '.join(cols)} FROM pg_stat_database WHERE datname = %s",
                (self.database,),
            )
            row = cur.fetchone() or (0,) * len(cols)
        return {c: int(v or 0) for c, v in zip(cols, row, strict=True)}

    def create_study(self, manifest: Mapping[str, Any]) -> None:
        self.api.create("tuningstudies", manifest, manifest["metadata"].get("namespace"))

    def finished_trials(self, namespace: str, name: str) -> int:
        """Finished trials per the study's status (what the operator told the ledger)."""
        obj = self.api.find("tuningstudies", name, namespace)
        trials = ((obj or {}).get("status") or {}).get("trials") or {}
        return sum(int(trials.get(k, 0) or 0) for k in ("completed", "pruned", "failed"))

    def study_status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.api.find("tuningstudies", name, namespace)
        return dict((obj or {}).get("status") or {})


@contextlib.contextmanager
def emulated_cluster(
    pg: PostgresServer | None = None,
    instant: Callable[[Mapping[str, Any]], str] = zero_work,
) -> Iterator[Bench]:
    """PostgreSQL (started unless given), a fresh database, API server and instant kubelet.

    Everything is removed afterwards; set ``KUBETUNE_BENCH_KEEP=1`` to keep the work folder
    (the operator's log is ``operator.log`` there).
    """
    own_pg = pg is None
    server = start_server() if pg is None else pg
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    api = EmulatedApi().start()
    kubelet: FakeKubelet | None = None
    bench: Bench | None = None
    try:
        for path in sorted((REPO / "crds").glob("*.yaml")):
            api.register_crd(path)
        timeline = Timeline()
        api.add_listener(timeline.listener)
        (workdir / "kubelet").mkdir()
        kubelet = FakeKubelet(api, workdir / "kubelet", instant=instant).start()
        database = server.create_database("bench")
        bench = Bench(server, database, api, kubelet, timeline, workdir)
        yield bench
    finally:
        if bench is not None:
            bench.stop_operator()
        if kubelet is not None:
            kubelet.stop()
        api.stop()
        if own_pg:
            server.cleanup()
        elif bench is not None:
            with contextlib.suppress(Exception):
                server.drop_database(bench.database)
        if not os.environ.get("KUBETUNE_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def warm_up(bench: Bench, timeout: float = 60.0) -> None:
    """Start the operator and run a 2-trial study through it, so imports and caches are warm.

    Raises ``RuntimeError`` with the operator's log tail when nothing happens in time.
    """
    if bench.operator is None:
        bench.start_operator()
    bench.create_study(study_manifest("warm-up", max_trials=2, parallelism=2))
    if not wait_until(lambda: bench.finished_trials("default", "warm-up") >= 2, timeout):
        raise RuntimeError(
            "the operator did not finish the warm-up study; log tail:\n" + bench.log_tail()
        )


def run_study(
    bench: Bench,
    name: str,
    *,
    trials: int,
    parallelism: int,
    sampler: str,
    timeout: float,
) -> dict[str, Any]:
    """One zero-work study through the operator; returns its rate and per-trial costs."""
    assert bench.operator is not None
    pid = bench.operator.pid
    requests_before = len(bench.api.requests)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    bench.create_study(
        study_manifest(name, max_trials=trials, parallelism=parallelism, sampler=sampler)
    )
    done = wait_until(lambda: bench.finished_trials("default", name) >= trials, timeout, 0.02)
    elapsed = time.perf_counter() - started
    finished = bench.finished_trials("default", name)
    cpu = cpu_seconds(pid) - cpu_before
    requests = len(bench.api.requests) - requests_before
    return {
        "study": name,
        "sampler": sampler,
        "trials": trials,
        "parallelism": parallelism,
        "finished": finished,
        "done": done,
        "seconds": elapsed,
        "trials_per_s": finished / elapsed if elapsed > 0 else math.nan,
        "operator_cpu_seconds": cpu,
        "operator_cpu_ms_per_trial": 1000 * cpu / finished if finished else math.nan,
        "api_requests_per_trial": requests / finished if finished else math.nan,
        "operator_rss_mib": bench.operator_rss_mib(),
        "db_connections": bench.db_connections(),
    }


def metrics_port(bench: Bench) -> int | None:
    """The operator's metrics port, from its start-up log line (``ports={'metrics': N, ...}``)."""
    match = re.search(r"ports=\{[^}]*'metrics': (\d+)", bench.log_tail(10**7))
    return int(match.group(1)) if match else None


def scrape(bench: Bench) -> str:
    """The operator's ``/metrics`` text (empty when the port is unknown or unreachable)."""
    port = metrics_port(bench)
    if port is None:
        return ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def histogram(text: str, name: str) -> dict[str, Any]:
    """Merge a Prometheus histogram's series; estimate p50/p95/p99 from its buckets."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = defaultdict(float)
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
    out: dict[str, Any] = {"count": count, "mean": total / count if count else math.nan}
    edges = sorted(buckets)
    for q in (50, 95, 99):
        out[f"p{q}"] = _bucket_quantile(edges, buckets, count, q / 100)
    return out


def _bucket_quantile(
    edges: list[float], buckets: Mapping[float, float], count: float, q: float
) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not count or not edges:
        return math.nan
    rank = q * count
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        cum = buckets[edge]
        if cum >= rank:
            if math.isinf(edge):
                return prev_edge
            if cum == prev_count:
                return edge
            return prev_edge + (edge - prev_edge) * (rank - prev_count) / (cum - prev_count)
        prev_edge, prev_count = edge, cum
    return edges[-1]


@contextlib.contextmanager
def profiled(bench: Bench, path: Path, rate: int = 100) -> Iterator[bool]:
    """Sample the operator with py-spy (if installed) into ``path`` (collapsed stacks).

    Yields whether py-spy is running. Only on-CPU samples are kept: where the operator spends
    CPU, not where it waits.
    """
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if bench.operator is None or not Path(spy_bin).exists():
        yield False
        return
    spy = subprocess.Popen(
        [
            spy_bin,
            "record",
            "-p",
            str(bench.operator.pid),
            "-o",
            str(path),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield True
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def profile_summary(
    path: Path, prefixes: tuple[str, ...] = ("kubetune", "optuna")
) -> list[tuple[str, float]]:
    """Inclusive share of on-CPU samples per function of the named packages, largest first."""
    if not path.exists():
        return []
    total = 0
    counts: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        seen = set()
        for frame in stack.split(";"):
            # "func (path/to/module.py:line)" -> "func (module.py)"
            name, _, where = frame.partition(" (")
            module = where.rsplit(":", 1)[0]
            if not any(module.startswith(f"{p}/") or f"/{p}/" in module for p in prefixes):
                continue
            key = f"{name} ({module.split('site-packages/')[-1].split('operator/')[-1]})"
            if key not in seen:
                seen.add(key)
                counts[key] += int(n)
    if not total:
        return []
    return sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1])
