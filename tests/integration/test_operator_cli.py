"""`kubetune operator`, the chart's entry point, as a real process against the emulated API.

Namespaced mode serves only its namespace, /healthz answers, logs are JSON when asked, the
storage password never reaches the logs, and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from operator_fixtures import operator_env, status, study_manifest, trainer_file, wait_state

from harness import Cluster
from harness.postgres import free_port
from support.hold import WAIT_SECONDS, finish

ROOT = Path(__file__).resolve().parents[2]


def _wait_http(url: str, log: Path, timeout: float = WAIT_SECONDS) -> int:
    """The first answer from ``url``; past ``timeout`` fail with the operator's log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return int(r.status)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{url} did not answer within {timeout:.0f} s ({exc}); the operator's log:\n"
                    f"{log.read_text(errors='replace')[-4000:]}"
                ) from None
            time.sleep(0.2)


def test_namespaced_operator_process_health_json_logs_and_clean_shutdown(
    cluster: Cluster, fresh_database: str, postgres_password: str, tmp_path: Path
) -> None:
    health, metrics, report = free_port(), free_port(), free_port()
    env = {**os.environ, **operator_env(fresh_database), "KUBECONFIG": str(cluster.kubeconfig)}
    env.pop("KUBETUNE_REPORT_PORT")
    env.pop("KUBETUNE_METRICS_PORT")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    for ns in ("team-a", "team-b"):
        cluster.api.ensure_namespace(ns)
    log = tmp_path / "operator.log"
    trainer = trainer_file(tmp_path)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetune.cli",
                "operator",
                "--namespace",
                "team-a",
                f"--health-port={health}",
                f"--metrics-port={metrics}",
                f"--report-port={report}",
                "--log-format=json",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            assert _wait_http(f"http://127.0.0.1:{health}/healthz", log) == 200
            cluster.api.create(
                "tuningstudies", study_manifest("mine", trainer, max_trials=2), "team-a"
            )
            cluster.api.create(
                "tuningstudies", study_manifest("theirs", trainer, max_trials=2), "team-b"
            )
            wait_state(cluster, "mine", "Succeeded", namespace="team-a")
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics") as r:
                exposed = r.read().decode()
            assert (
                'kubetune_study_trials{namespace="team-a",state="COMPLETE",study="mine"} 2.0'
                in exposed
            )
            proc.send_signal(signal.SIGTERM)
            code, _ = finish(proc, "the operator after SIGTERM")
            assert code == 0, log.read_text(errors="replace")[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The other namespace was never touched: no status, no Jobs.
    assert status(cluster, "theirs", "team-b") == {}
    assert cluster.api.list("jobs", "team-b") == []
    text = log.read_text()
    assert postgres_password not in text
    json_lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert json_lines, text[-2000:]
    for ln in json_lines:
        record = json.loads(ln)
        assert "message" in record
