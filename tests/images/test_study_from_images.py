"""Issue 14: a study from the images, with the exact bits a cluster would pull.

The operator runs from ``localhost/kubetune`` (podman: host network, read-only root, a tmpfs
``/tmp``, capabilities dropped, the kubeconfig with inlined certificates, its secrets in an
env-file) against the real control plane, with PostgreSQL as its storage; the kubelet
stand-in, in its podman runtime, runs every trial pod from ``localhost/kubetune-trainer`` as
the pod spec says (the shipped quickstart names ``kubetune-trainer:<version>``, resolved to the
local store as a registry mirror would; shrunk to 6 trials of 4 epochs with one torch thread
per 1-CPU trial). The assertions are on what exists afterwards: the study's status, the trials
in the database, the pods the apiserver stored, the containers left. It prints how long the
study took; it asserts no timing.

The smaller tests pin the runtime itself: what a trial container sees (its env, user, read-only
root, termination-message mount), that an eviction kills and removes it, and that an image
absent from the store is ``ErrImagePull``.
"""

from __future__ import annotations

import copy
import json
import secrets
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from harness import Cluster
from harness.postgres import free_port

from ._engine import OPERATOR_IMAGE, REPO, TRAINER_IMAGE, required_engine
from ._kube import answers, self_contained_kubeconfig

ENGINE = required_engine(OPERATOR_IMAGE, TRAINER_IMAGE, name="podman")

NS = "default"
QUICKSTART = REPO / "examples" / "quickstart.yaml"
#: The quickstart, shrunk: 6 trials of 4 epochs, 2 at a time (as the process-mode e2e test).
MAX_TRIALS, EPOCHS, PARALLELISM = 6, 4, 2
TOKEN_KEY = secrets.token_hex(16)
#: What a registry mirror does for the pods: the image names they use -> the local store.
TRAINER_NAME = TRAINER_IMAGE.removeprefix("localhost/")
ALIASES = {TRAINER_NAME: TRAINER_IMAGE}


def _quickstart() -> dict[str, Any]:
    manifest = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text()))
    spec = manifest["spec"]
    spec["budget"].update({"maxTrials": MAX_TRIALS, "parallelism": PARALLELISM})
    (container,) = spec["trial"]["template"]["spec"]["containers"]
    container["args"] = [
        f"--epochs={EPOCHS}" if a.startswith("--epochs=") else a for a in container["args"]
    ]
    # One torch thread for the one CPU of its limit: torch sizes its pool by the node's cores,
    # not the cgroup quota, and two threads under a 1-CPU quota train 10-40x slower here.
    assert container["resources"]["limits"]["cpu"] == "1"
    container["args"].append("--threads=1")
    return dict(manifest)


def _podman_kubelet(cluster: Cluster) -> None:
    cluster.kubelet.runtime = "podman"
    cluster.kubelet.image_aliases = dict(ALIASES)


def _containers_of(pod_uids: set[str]) -> list[str]:
    """Containers (running or not) podman still holds for these pods."""
    done = subprocess.run(
        ["podman", "ps", "--all", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [
        str(c["Names"])
        for c in json.loads(done.stdout or "[]")
        if (c.get("Labels") or {}).get("io.kubernetes.pod.uid") in pod_uids
    ]


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- the operator from its image


@dataclass
class OperatorContainer:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    healthy_after: float = 0.0  # seconds from ``podman run`` to ``/healthz`` answering

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def operator_container(
    cluster: Cluster, fresh_database: str, tmp_path: Path
) -> Iterator[OperatorContainer]:
    """``kubetune operator`` from the image, watching ``default``, healthy."""
    kubeconfig = self_contained_kubeconfig(cluster.plane, tmp_path / "kubeconfig")
    health, metrics, report = free_port(), free_port(), free_port()
    env_file = tmp_path / "operator.env"
    env_file.touch(mode=0o600)
    env = {
        "KUBECONFIG": "/etc/kubetune/kubeconfig",
        "KUBETUNE_STORAGE_URL": fresh_database,
        "KUBETUNE_TOKEN_KEY": TOKEN_KEY,
        "KUBETUNE_REPORT_URL": f"http://127.0.0.1:{report}",
        "KUBETUNE_RESYNC_SECONDS": "2",
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    name = f"kubetune-operator-{secrets.token_hex(4)}"
    command = ENGINE.command(
        OPERATOR_IMAGE,
        [
            f"--namespace={NS}",
            f"--health-port={health}",
            f"--metrics-port={metrics}",
            f"--report-port={report}",
        ],
        env_file=env_file,
        volumes=[f"{kubeconfig}:/etc/kubetune/kubeconfig:ro"],
        read_only=True,
        host_network=True,
        name=name,
    )
    log = tmp_path / "operator.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    running = OperatorContainer(name, process, log)
    try:
        began = time.monotonic()
        while not answers(health, "/healthz"):
            if process.poll() is not None or time.monotonic() > began + 120:
                pytest.fail(f"the operator container never got healthy:\n{running.output()}")
            time.sleep(0.2)
        running.healthy_after = time.monotonic() - began
        yield running
    finally:
        ENGINE.remove(name)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- the quickstart


def test_quickstart_runs_from_the_built_images(
    cluster: Cluster,
    operator_container: OperatorContainer,
    fresh_database: str,
    postgres_password: str,
) -> None:
    _podman_kubelet(cluster)
    manifest = _quickstart()
    (container,) = manifest["spec"]["trial"]["template"]["spec"]["containers"]
    assert container["image"] in ALIASES, (
        f"examples/quickstart.yaml names {container['image']!r}, not the image "
        f"scripts/build-images makes ({TRAINER_IMAGE})"
    )

    began = time.monotonic()
    cluster.api.create("tuningstudies", manifest, NS)

    def state() -> str | None:
        found = cluster.api.find("tuningstudies", "quickstart", NS) or {}
        return (found.get("status") or {}).get("state")

    try:
        cluster.api.wait_for(lambda: state() in ("Succeeded", "Failed"), timeout=300, interval=1)
    except TimeoutError:
        pytest.fail(f"no end in 300 s\n{cluster.describe()}\n{operator_container.output()}")
    study_seconds = time.monotonic() - began
    final = (cluster.api.find("tuningstudies", "quickstart", NS) or {})["status"]
    assert final["state"] == "Succeeded", f"{final}\n{operator_container.output()}"
    assert operator_container.process.poll() is None, operator_container.output()

    # The database: every trial finished; the complete ones hold a value and one report an epoch.
    study = optuna.load_study(study_name=final["optunaStudyName"], storage=fresh_database)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert len(trials) == MAX_TRIALS and set(states) <= {"COMPLETE", "PRUNED"}, states
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete, states
    for t in complete:
        assert t.value is not None and 0.0 < t.value <= 1.0, (t.number, t.value)
        assert sorted(t.intermediate_values) == list(range(EPOCHS)), t.number
    assert final["trials"]["failed"] == 0 and final["trials"]["retried"] == 0, final["trials"]
    best = max(float(t.value or 0.0) for t in complete)
    assert float(final["bestValue"]) == pytest.approx(best, rel=1e-5)

    # The pods: one per trial, each run from the image by the podman runtime, exit 0.
    seen: dict[str, dict[str, Any]] = {}
    for s in cluster.history:
        labels = s.obj["metadata"].get("labels") or {}
        if s.key == "pods" and labels.get("kubetune.io/study") == "quickstart":
            seen[s.obj["metadata"]["uid"]] = s.obj  # the last version of each
    assert len(seen) == MAX_TRIALS, sorted(p["metadata"]["name"] for p in seen.values())
    durations = []
    for pod in seen.values():
        (status,) = pod["status"]["containerStatuses"]
        terminated = status["state"]["terminated"]
        assert terminated["exitCode"] == 0 and status["image"] == container["image"], status
        durations.append(_seconds(terminated["finishedAt"]) - _seconds(terminated["startedAt"]))
        log = cluster.kubelet.log_of(NS, pod["metadata"]["name"])
        assert "Training started" in log and "device=cpu" in log, log[-2000:]
    assert _containers_of(set(seen)) == [], "trial containers were left behind"

    # No pod ever held the storage URL, the password or the token key: only literal values.
    for s in cluster.history:
        if s.key != "pods":
            continue
        for c in s.obj["spec"]["containers"]:
            assert not c.get("envFrom"), c["envFrom"]
            assert all(set(e) == {"name", "value"} for e in c.get("env") or []), c["env"]
            text = json.dumps(c.get("env") or [])
            for secret in (postgres_password, TOKEN_KEY, "postgresql", "KUBETUNE_STORAGE_URL"):
                assert secret not in text, secret
            assert "KUBETUNE_TRIAL_TOKEN" in text

    print(
        f"\noperator container healthy after {operator_container.healthy_after:.1f} s; "
        f"quickstart from the images: {MAX_TRIALS} trials x {EPOCHS} epochs, "
        f"parallelism {PARALLELISM}: Succeeded in {study_seconds:.1f} s; "
        f"states {sorted(states)}; pod run time (1 s resolution) "
        f"median {statistics.median(durations):.0f} s, max {max(durations):.0f} s"
    )


# ---------------------------------------------------------------- the podman runtime itself

_PROBE = r"""
import json, os, sys, time
try:
    open("/probe", "w")
    root = "writable"
except OSError:
    root = "read-only"
def first(*paths):  # cgroup v2, then v1
    for path in paths:
        if os.path.exists(path):
            return open(path).read().split()[0]
cgroup = "/sys/fs/cgroup/"
limits = {"cpu": first(cgroup + "cpu.max", cgroup + "cpu/cpu.cfs_quota_us"),
          "memory": first(cgroup + "memory.max", cgroup + "memory/memory.limit_in_bytes")}
with open("/dev/termination-log", "w") as f:
    f.write(json.dumps({"uid": os.getuid(), "root": root, "argv": sys.argv[1:],
                        "limits": limits, "env": dict(os.environ)}))
time.sleep(float(os.environ["SLEEP"]))
"""


def _job(name: str, image: str, sleep: float) -> dict[str, Any]:
    container = {
        "name": "trial",
        "image": image,
        "command": ["python", "-c", _PROBE],
        "args": ["lr=$(LR)", "pod=$(POD)"],
        "env": [
            {"name": "LR", "value": "0.5"},
            {"name": "SLEEP", "value": str(sleep)},
            {"name": "MULTI", "value": "a\nb"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def _pod_of(cluster: Cluster, job: str) -> dict[str, Any] | None:
    pods = cluster.api.list("pods", NS, label_selector=f"job-name={job}")
    return pods[0] if pods else None


def _terminated(cluster: Cluster, job: str) -> dict[str, Any] | None:
    for status in ((_pod_of(cluster, job) or {}).get("status") or {}).get(
        "containerStatuses"
    ) or []:
        if "terminated" in status.get("state", {}):
            return dict(status["state"]["terminated"])
    return None


def test_a_trial_container_sees_its_pod_spec_and_nothing_of_the_host(cluster: Cluster) -> None:
    _podman_kubelet(cluster)
    cluster.api.create("jobs", _job("probe", TRAINER_NAME, 0), NS)
    terminated = cluster.api.wait_for(lambda: _terminated(cluster, "probe"), 120)
    assert terminated["exitCode"] == 0, terminated
    seen = json.loads(terminated["message"])
    pod = _pod_of(cluster, "probe") or {}
    assert seen["argv"] == ["lr=0.5", f"pod={pod['metadata']['name']}"]
    assert seen["uid"] == 65532 and seen["root"] == "read-only"
    assert seen["limits"] == {"cpu": "50000", "memory": str(256 * 2**20)}, "cgroup limits"
    env = seen["env"]
    assert env["LR"] == "0.5" and env["MULTI"] == "a\nb" and env["POD"] == pod["metadata"]["name"]
    assert env["HOME"] == "/tmp", "the image's own environment stays"
    for host_only in ("KUBECONFIG", "KUBETUNE_TERMINATION_LOG", "VIRTUAL_ENV"):
        assert host_only not in env, host_only
    assert _containers_of({pod["metadata"]["uid"]}) == []


def test_an_evicted_trial_container_is_killed_and_removed(cluster: Cluster) -> None:
    _podman_kubelet(cluster)
    cluster.api.create("jobs", _job("evicted", TRAINER_NAME, 600), NS)
    name = cluster.api.wait_for(lambda: cluster.kubelet.active_pod("evicted", NS), 60)
    uid = (cluster.api.find("pods", name, NS) or {})["metadata"]["uid"]
    cluster.api.wait_for(lambda: _containers_of({uid}), 60, message="no container started")
    began = time.monotonic()
    cluster.kubelet.evict(name, NS)
    cluster.api.wait_for(
        lambda: not _containers_of({uid}), 60, 0.2, "the evicted container is still there"
    )
    print(f"\neviction to container gone: {time.monotonic() - began:.1f} s")
    cluster.api.wait_for(lambda: cluster.api.find("pods", name, NS) is None, 60)
    assert cluster.kubelet.running_processes() == 0


def test_an_image_missing_from_the_store_is_err_image_pull(cluster: Cluster) -> None:
    _podman_kubelet(cluster)
    cluster.api.create("jobs", _job("nopull", "kubetune-missing:0.0.0", 0), NS)

    def waiting() -> dict[str, Any] | None:
        for status in ((_pod_of(cluster, "nopull") or {}).get("status") or {}).get(
            "containerStatuses"
        ) or []:
            if "waiting" in status.get("state", {}):
                return dict(status["state"]["waiting"])
        return None

    reason = cluster.api.wait_for(waiting, 60)
    assert reason["reason"] == "ErrImagePull", reason
    assert "kubetune-missing:0.0.0" in reason["message"]
