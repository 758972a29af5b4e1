"""A real cluster for the operator benchmarks: PostgreSQL, Kubernetes v1.32, kubelet stand-in.

Everything is the project's own test harness (``tests/harness``): a real PostgreSQL, the real
control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler v1.32 from
``../shared/k8s``) on its own port base and folder, the kubelet stand-in in *instant* mode (no
process runs: a pod ends at once with a termination message; the real Job controller turns the
Job Complete), the recording proxy between the operator and the apiserver, and the real operator
(``kopf run -m kubetune.handlers``) in its own process, as in a cluster, so its RSS and CPU are
its own.

A watch on the trial Jobs records, with ``time.perf_counter``, when each Job is first seen
(created) and when it is first seen Complete -- the API's own timestamps have one-second
precision. Both ends come through the same watch stream, so its delivery delay cancels out.

Tests pass the session's running cluster (``cluster=``); benchmarks run on their own start a
control plane of their own (``KUBETUNE_BENCH_K8S_PORT_BASE``, default 29000).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
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
from typing import TYPE_CHECKING, Any

from benchmarks._common import REPO, rss_mib
from harness.cluster import ClusterApi, install_crds
from harness.control_plane import ControlPlane
from harness.kube import KubeApi
from harness.kubelet import Kubelet
from harness.postgres import PostgresServer, start_server
from harness.proxy import FaultProxy, write_kubeconfig
from support import manifests

if TYPE_CHECKING:
    from harness.cluster import Cluster

JOBS = "jobs"
STUDY_LABEL = "kubetune.io/study"
TOKEN_KEY = "benchmark-token-key-0123456789abcdef"
#: Port base of a benchmark's own control plane (the tests' default is 26000).
DEFAULT_PORT_BASE = 29000
#: The node's pod capacity: finished pods stay until their Job goes, and the scale benchmark
#: keeps thousands of them.
NODE_PODS = 20000
#: Client rate limits given to kube-controller-manager and kube-scheduler (upstream defaults:
#: 20/30 and 50/100 requests/s). At the default the Job controller, not the operator, paces a
#: benchmark of hundreds of zero-work trials. 0 keeps the defaults.
CONTROL_PLANE_QPS = int(os.environ.get("KUBETUNE_BENCH_CONTROL_PLANE_QPS", "200"))
#: Who the operator is to the apiserver: ``admin`` (the cluster-admin certificate, group
#: ``system:masters``, which API priority and fairness exempts: it can never be answered 429)
#: or ``serviceaccount`` (a ServiceAccount token bound to ``cluster-admin``: RBAC allows the
#: same, but its requests are queued and limited as a deployed operator's are, priority level
#: ``workload-low``). Only a benchmark's own control plane honours it.
OPERATOR_IDENTITY = os.environ.get("KUBETUNE_BENCH_OPERATOR_IDENTITY", "admin")
BENCH_SERVICE_ACCOUNT = "kubetune-bench"

#: How the operator benchmarks run the operator, printed with their conditions.
OPERATOR_SETUP = (
    "kopf run -m kubetune.handlers (own process) through the recording proxy; real control "
    "plane v1.32 (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on the same "
    "machine; kubelet stand-in in instant mode"
)


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
    ask_ahead: int | None = None,
) -> dict[str, Any]:
    """A two-parameter study with zero-work trials (result by termination message);
    ``ask_ahead`` None keeps the default."""
    budget: dict[str, Any] = {"maxTrials": max_trials, "parallelism": parallelism}
    if ask_ahead is not None:
        budget["askAhead"] = ask_ahead
    return manifests.study_manifest(
        name,
        namespace=namespace,
        objectives=[{"name": "loss", "direction": "minimize"}],
        search_space=[
            {"name": "x", "float": {"low": 0.0, "high": 1.0}},
            {"name": "y", "float": {"low": 0.0, "high": 1.0}},
        ],
        sampler={"type": sampler, "seed": seed},
        budget=budget,
        trial={"result": {"from": "TerminationMessage"}},
        container={"name": "trial", "image": "zero-work:1", "command": ["true"]},
    )


def effective_ask_ahead(sampler: str, parallelism: int, ask_ahead: int | None) -> int:
    """The trials the operator keeps asked ahead for :func:`study_manifest`'s study."""
    from kubetune.reconcile._ahead import ask_ahead as rule
    from kubetune.spec import parse_manifest

    manifest = study_manifest(
        "x", max_trials=10, parallelism=parallelism, sampler=sampler, ask_ahead=ask_ahead
    )
    return rule(parse_manifest(manifest).spec)


@dataclass
class Timeline:
    """Per study (``namespace/label``): perf_counter times of Job creations and of Jobs
    turning Complete, each Job counted once (a relisted watch repeats what it saw)."""

    created: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    completed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: Per study: Job first seen -> first seen Complete (the control plane's and the kubelet
    #: stand-in's part of a trial's cycle; the operator's part is the launch latency).
    job_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _made: dict[tuple[str, str], float] = field(default_factory=dict)
    _done: set[tuple[str, str]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def on_job(self, kind: str, obj: Mapping[str, Any]) -> None:
        """One watch event of a trial Job."""
        now = time.perf_counter()
        meta = obj.get("metadata") or {}
        study = f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(STUDY_LABEL)}"
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED":
            return
        with self.lock:
            if key not in self._made:
                self._made[key] = now
                self.created[study].append(now)
            if key not in self._done and _complete(obj):
                self._done.add(key)
                self.completed[study].append(now)
                self.job_seconds[study].append(now - self._made[key])

    def follow(self, api: KubeApi, namespace: str) -> None:
        """Watch the namespace's trial Jobs from a thread until :meth:`stop`."""

        def run() -> None:
            for kind, obj in api.watch(
                JOBS, namespace, label_selector=STUDY_LABEL, stop=self._stop
            ):
                self.on_job(kind, obj)

        threading.Thread(target=run, daemon=True, name="bench-timeline").start()

    def stop(self) -> None:
        self._stop.set()

    def created_count(self, study: str) -> int:
        with self.lock:
            return len(self.created.get(study, []))

    def launch_latencies(self, parallelism: int, study: str | None = None) -> list[float]:
        """Slot freed -> Job created: the k-th completion refills slot k+parallelism (FIFO).

        ``study`` is ``namespace/name``; all studies when None.
        """
        out: list[float] = []
        with self.lock:
            for key, done in self.completed.items():
                if study is not None and key != study:
                    continue
                made = sorted(self.created.get(key, []))
                for k, t_done in enumerate(sorted(done)):
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
    """One running set-up; see :func:`real_cluster`."""

    pg: PostgresServer
    database: str
    api: KubeApi
    kubelet: Kubelet
    proxy: FaultProxy
    kubeconfig: Path
    timeline: Timeline
    workdir: Path
    plane: ControlPlane
    namespace: str = "default"
    operator: subprocess.Popen[bytes] | None = None
    operator_log: Path | None = None
    trace: Path | None = None

    @property
    def storage_url(self) -> str:
        return str(self.pg.url(self.database))

    def start_operator(
        self, extra_env: Mapping[str, str] | None = None, *, trace: Path | None = None
    ) -> None:
        """``python -m kopf run --standalone -A -m kubetune.handlers`` in its own process,
        talking to the apiserver through the recording proxy.

        With ``trace`` (a file), the module is ``benchmarks._traced_operator`` instead: the
        same handlers, with the calls of a reconcile pass timed into that file.
        """
        module = "kubetune.handlers" if trace is None else "benchmarks._traced_operator"
        self.trace = trace
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_STORAGE_URL": self.storage_url,
            "KUBETUNE_TOKEN_KEY": TOKEN_KEY,
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_REPORT_PORT": "0",
            "MALLOC_ARENA_MAX": "2",  # as the operator image sets it (Dockerfile)
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "operator"), str(REPO), os.environ.get("PYTHONPATH", "")]
            ),
            **({"KUBETUNE_BENCH_TRACE": str(trace)} if trace is not None else {}),
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
                    module,
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

    # ---- what the operator asked of the apiserver (the proxy's log) ---------------------------

    def api_requests(self) -> int:
        """Requests the operator sent so far (a watch counts once, when it opens)."""
        return len(self.proxy.requests)

    def api_request_counts(self, since: int = 0) -> dict[str, int]:
        """``verb resource`` -> count, and ``status <code>`` for every non-2xx answer."""
        counts: dict[str, int] = defaultdict(int)
        for r in list(self.proxy.requests)[since:]:
            counts[f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"] += 1
            if r.status >= 300:
                counts[f"status {r.status}"] += 1
        return dict(sorted(counts.items()))

    def control_plane_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by etcd and each control-plane process."""
        out = {}
        for pidfile in sorted((self.plane.folder / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                out[pidfile.stem] = cpu_seconds(int(pidfile.read_text().strip()))
        return out

    # ---- PostgreSQL ---------------------------------------------------------------------------

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

    # ---- studies ------------------------------------------------------------------------------

    def create_study(self, manifest: Mapping[str, Any]) -> None:
        doc = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        self.api.create("tuningstudies", doc, self.namespace)

    def study_key(self, name: str) -> str:
        """The Timeline's key for a study (``namespace/label``)."""
        return f"{self.namespace}/{name}"

    def finished_trials(self, name: str) -> int:
        """Finished trials per the study's status (what the operator told the ledger)."""
        obj = self.api.find("tuningstudies", name, self.namespace)
        trials = ((obj or {}).get("status") or {}).get("trials") or {}
        return sum(int(trials.get(k, 0) or 0) for k in ("completed", "pruned", "failed"))

    def finished_by_study(self) -> dict[str, int]:
        """Finished trials of every study in the namespace, from one list call."""
        out = {}
        for obj in self.api.list("tuningstudies", self.namespace):
            trials = (obj.get("status") or {}).get("trials") or {}
            out[obj["metadata"]["name"]] = sum(
                int(trials.get(k, 0) or 0) for k in ("completed", "pruned", "failed")
            )
        return out

    def study_status(self, name: str) -> dict[str, Any]:
        obj = self.api.find("tuningstudies", name, self.namespace)
        return dict((obj or {}).get("status") or {})


def _tune_control_plane(plane: ControlPlane, qps: int) -> None:
    """Restart kube-controller-manager and kube-scheduler with higher client rate limits.

    Same command line plus ``--kube-api-qps``/``--kube-api-burst``; the new PIDs go into the
    pid files, so ``plane.down()`` stops them as before.
    """
    if qps <= 0:
        return
    for name in ("kube-controller-manager", "kube-scheduler"):
        pidfile = plane.folder / "run" / f"{name}.pid"
        pid = int(pidfile.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        args = [a.decode() for a in argv if not a.startswith(b"--kube-api-")]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log = (plane.folder / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*args, f"--kube-api-qps={qps}", f"--kube-api-burst={2 * qps}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=plane.folder,
        )
        log.close()
        pidfile.write_text(f"{proc.pid}\n")
    port_base = int(plane.server.rsplit(":", 1)[1]) - 443
    for port in (port_base + 257, port_base + 259):
        _wait_healthy(f"https://127.0.0.1:{port}/healthz")


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2, context=context) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f} s")


@contextlib.contextmanager
def own_control_plane(workdir: Path, port_base: int | None = None) -> Iterator[ControlPlane]:
    """A control plane of the benchmark's own (its own folder and port base), wiped after."""
    base = port_base or int(os.environ.get("KUBETUNE_BENCH_K8S_PORT_BASE", DEFAULT_PORT_BASE))
    plane = ControlPlane.up(workdir / "k8s", port_base=base)
    try:
        _tune_control_plane(plane, CONTROL_PLANE_QPS)
        yield plane
    finally:
        plane.down(wipe=not os.environ.get("KUBETUNE_BENCH_KEEP"))


@contextlib.contextmanager
def real_cluster(
    pg: PostgresServer | None = None,
    instant: Callable[[Mapping[str, Any]], str] = zero_work,
    cluster: Cluster | None = None,
    port_base: int | None = None,
) -> Iterator[Bench]:
    """PostgreSQL (started unless given), a fresh database, the real control plane (started
    unless ``cluster``, the tests' running one, is given), the recording proxy and the
    kubelet stand-in in instant mode.

    Everything this started is removed afterwards; set ``KUBETUNE_BENCH_KEEP=1`` to keep the
    work folder (the operator's log is ``operator.log`` there, the control plane's logs are
    under ``k8s/logs``).
    """
    own_pg = pg is None
    server = start_server() if pg is None else pg
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    bench: Bench | None = None
    timeline = Timeline()
    try:
        with contextlib.ExitStack() as stack:
            if cluster is None:
                plane = stack.enter_context(own_control_plane(workdir, port_base))
                api = ClusterApi(plane.kubeconfig)
                stack.callback(api.close)
                install_crds(plane)
                proxy = FaultProxy(api.server, api.ca_file, api.cert).start()
                stack.callback(proxy.stop)
                api.proxy = proxy
                kubelet = Kubelet(api, workdir / "kubelet", plane.folder / "pki", pods=NODE_PODS)
                kubelet.start()
                stack.callback(kubelet.stop)
                token = _service_account_token(plane) if OPERATOR_IDENTITY != "admin" else None
                kubeconfig = write_kubeconfig(workdir / "kubeconfig.yaml", proxy.url, token=token)
            else:
                plane, api, kubelet = cluster.plane, cluster.api, cluster.kubelet
                proxy, kubeconfig = cluster.proxy, cluster.kubeconfig
            kubelet.instant = instant
            watcher = KubeApi(plane.kubeconfig)
            stack.callback(watcher.close)
            stack.callback(timeline.stop)
            database = server.create_database("bench")
            bench = Bench(
                server, database, api, kubelet, proxy, kubeconfig, timeline, workdir, plane
            )
            stack.callback(bench.stop_operator)
            timeline.follow(watcher, bench.namespace)
            yield bench
    finally:
        if own_pg:
            server.cleanup()
        elif bench is not None:
            with contextlib.suppress(Exception):
                server.drop_database(bench.database)
        if not os.environ.get("KUBETUNE_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def _service_account_token(plane: ControlPlane) -> str:
    """A token of a ServiceAccount bound to ``cluster-admin`` (see ``OPERATOR_IDENTITY``)."""
    if OPERATOR_IDENTITY != "serviceaccount":
        raise ValueError(f"KUBETUNE_BENCH_OPERATOR_IDENTITY={OPERATOR_IDENTITY!r}")
    sa = BENCH_SERVICE_ACCOUNT
    plane.kubectl("create", "serviceaccount", sa, "-n", "default")
    plane.kubectl(
        "create",
        "clusterrolebinding",
        sa,
        "--clusterrole=cluster-admin",
        f"--serviceaccount=default:{sa}",
    )
    return plane.kubectl("create", "token", sa, "-n", "default", "--duration=4h").strip()


def flowcontrol(bench: Bench) -> dict[str, dict[str, float]]:
    """The apiserver's API priority and fairness counters per priority level: requests
    dispatched and rejected (a rejection is a 429), summed over flow schemas and reasons."""
    from prometheus_client.parser import text_string_to_metric_families

    text = bench.plane.kubectl("get", "--raw", "/metrics", check=False)
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    wanted = {
        "apiserver_flowcontrol_dispatched_requests": "dispatched",
        "apiserver_flowcontrol_rejected_requests": "rejected",
    }
    with contextlib.suppress(ValueError):
        for family in text_string_to_metric_families(text):
            key = wanted.get(family.name)
            for sample in family.samples if key else ():
                if sample.name.endswith("_total"):
                    out[sample.labels.get("priority_level", "?")][key] += sample.value
    return {level: dict(v) for level, v in out.items()}


def flowcontrol_delta(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """``after - before`` per priority level and counter; levels with nothing new are left out."""
    out: dict[str, dict[str, float]] = {}
    for level, counts in after.items():
        delta = {k: v - before.get(level, {}).get(k, 0.0) for k, v in counts.items()}
        if any(delta.values()):
            out[level] = delta
    return out


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


def warm_up(bench: Bench, timeout: float = 60.0, trace: Path | None = None) -> None:
    """Start the operator and run a 2-trial study through it, so imports and caches are warm.

    Raises ``RuntimeError`` with the operator's log tail when nothing happens in time.
    """
    if bench.operator is None:
        bench.start_operator(trace=trace)
    bench.create_study(study_manifest("warm-up", max_trials=2, parallelism=2))
    if not wait_until(lambda: bench.finished_trials("warm-up") >= 2, timeout, 0.1):
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
    ask_ahead: int | None = None,
) -> dict[str, Any]:
    """One zero-work study through the operator; returns its rate and per-trial costs."""
    assert bench.operator is not None
    pid = bench.operator.pid
    requests_before = bench.api_requests()
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    bench.create_study(
        study_manifest(
            name,
            max_trials=trials,
            parallelism=parallelism,
            sampler=sampler,
            ask_ahead=ask_ahead,
        )
    )
    done = wait_until(lambda: bench.finished_trials(name) >= trials, timeout, 0.05)
    elapsed = time.perf_counter() - started
    finished = bench.finished_trials(name)
    cpu = cpu_seconds(pid) - cpu_before
    requests = bench.api_requests() - requests_before
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
        "api_requests": bench.api_request_counts(requests_before),
        "operator_rss_mib": bench.operator_rss_mib(),
        "db_connections": bench.db_connections(),
    }


def metrics_port(bench: Bench) -> int | None:
    """The operator's metrics port, from its start-up log line (``ports={'metrics': N, ...}``).

    Read from the start of the log: at 100 x 50 the log passed 10 MB and a read of its tail
    no longer held the line, so the final scrape (the reconcile histogram) came back empty.
    """
    if bench.operator_log is None or not bench.operator_log.exists():
        return None
    with bench.operator_log.open(errors="replace") as log:
        for line in log:
            match = re.search(r"ports=\{[^}]*'metrics': (\d+)", line)
            if match:
                return int(match.group(1))
    return None


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


def _histogram_series(text: str, name: str) -> tuple[dict[float, float], float, float]:
    """A Prometheus histogram's series merged: cumulative buckets, sum, count."""
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
    return buckets, total, count


def histogram(text: str, name: str, minus: str | None = None) -> dict[str, Any]:
    """Merge a Prometheus histogram's series; estimate p50/p95/p99 from its buckets.

    With ``minus`` (an earlier scrape of the same process), only what was observed between the
    two scrapes counts.
    """
    buckets, total, count = _histogram_series(text, name)
    if minus and not count:  # no scrape now: nothing to subtract from (not a negative count)
        minus = None
    if minus:
        old_buckets, old_total, old_count = _histogram_series(minus, name)
        buckets = defaultdict(float, {e: v - old_buckets.get(e, 0.0) for e, v in buckets.items()})
        total, count = total - old_total, count - old_count
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


def trace_summary(path: Path, study: str) -> dict[str, Any]:
    """Where one study's reconcile passes spent their wall-clock time (``--trace``).

    ``study`` is ``namespace/label``. Per call kind: count, p50 and mean ms, and ms per pass;
    for passes: how many, how many launched or told something, their p50/p95 duration, and
    the wait between the first wake-up after a pass started and the next pass's start (an
    event that arrives during a pass waits for it to end).
    """
    from benchmarks._common import percentile

    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    passes = sorted((e for e in events if e["k"] == "pass" and e["s"] == study), key=_t)
    wakes = sorted(e["t"] for e in events if e["k"] == "wake" and e["s"] == study)
    others = sorted((e for e in events if e["k"] not in ("pass", "wake")), key=_t)
    starts = [e["t"] for e in others]
    inside: dict[str, list[dict[str, Any]]] = defaultdict(list)
    busy = []
    for p in passes:
        lo, hi = bisect.bisect_left(starts, p["t"]), bisect.bisect_right(starts, p["t"] + p["d"])
        calls = others[lo:hi]
        acted = any(c["k"] == "decide" and c.get("actions") for c in calls)
        if acted:
            busy.append(p)
        for c in calls:
            inside[c["k"]].append(c)
    waits = []
    for prev, nxt in itertools.pairwise(passes):
        woken = [w for w in wakes if prev["t"] <= w <= nxt["t"]]
        if woken:
            waits.append(nxt["t"] - woken[0])
    ms = lambda xs: [1000 * x for x in xs]  # noqa: E731
    calls_out = {}
    for kind, items in sorted(inside.items()):
        d = ms([c["d"] for c in items])
        q = ms([c.get("queued", 0.0) for c in items])
        calls_out[kind] = {
            "count": len(items),
            "p50_ms": percentile(d, 50),
            "mean_ms": sum(d) / len(d),
            "queued_mean_ms": sum(q) / len(q),
            "ms_per_pass_that_acted": sum(d) / len(busy) if busy else math.nan,
        }
    launches = [c.get("launches", 0) for c in inside.get("decide", []) if c.get("launches")]
    return {
        "passes": len(passes),
        "passes_that_acted": len(busy),
        "pass_p50_ms": percentile(ms([p["d"] for p in passes]), 50),
        "acting_pass_p50_ms": percentile(ms([p["d"] for p in busy]), 50),
        "acting_pass_p95_ms": percentile(ms([p["d"] for p in busy]), 95),
        "idle_pass_p50_ms": percentile(ms([p["d"] for p in passes if p not in busy]), 50),
        "wakes": len(wakes),
        "wake_to_pass_p50_ms": percentile(ms(waits), 50),
        "wake_to_pass_p95_ms": percentile(ms(waits), 95),
        "launches_per_launching_pass_mean": sum(launches) / len(launches) if launches else 0,
        "calls": calls_out,
    }


def _t(event: Mapping[str, Any]) -> float:
    return float(event["t"])
