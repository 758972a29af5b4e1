"""The chart installed for real, and the operator run with the chart's RBAC and nothing more.

``helm install`` puts the chart into the real kube-apiserver (no in-chart PostgreSQL, the
storage URL in a Secret made here, the Deployment scaled to 0: no image can run here). The
operator under test is ``kubetune operator`` as a local process, with the flags and the
environment of the installed Deployment (its Secrets resolved as the kubelet would) and a
kubeconfig holding a real token of the chart's ServiceAccount, through the recording proxy.
It runs a study to the end, one with a failing trial (log tail, Events), and both are deleted.

Then the proxy's log is the authority: no request was refused (403), and the set of
(apiGroup, resource[/subresource], verb) the operator asked for is exactly what the chart
grants, in both watch modes: a missing grant and a surplus grant both fail.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest

from harness import Cluster, RequestRecord
from harness.postgres import free_port
from integration.operator_fixtures import study_manifest, trainer_file

from ._helm import CHART, RELEASE, HelmError, run_helm, value_args
from .rbac import Permission, rendered_permissions

REPO = Path(__file__).resolve().parents[2]
SERVICE_ACCOUNT = f"{RELEASE}-kubetune"  # the chart's fullname for release "kt"
DEPLOYMENT = SERVICE_ACCOUNT
DB_SECRET = "kubetune-db"
#: What every install here sets: an existing Secret for the storage (no in-chart database),
#: and no operator pod (the kubelet stand-in cannot run the image; the process below is it).
BASE_VALUES = [
    "postgresql.enabled=false",
    f"storage.existingSecret={DB_SECRET}",
    "replicaCount=0",
]
ALL_NAMESPACES = [*BASE_VALUES, "watch.mode=AllNamespaces"]

#: Grants the runs below do not exercise, with the reason each is still granted. Empty: every
#: grant of the chart is used by a plain study run. Add an entry only with its reason.
UNEXERCISED_GRANTS: dict[Permission, str] = {
    ("batch", "jobs", "patch"): "spec.suspend: true/false sets spec.suspend on the running "
    "Jobs (tests/integration/test_operator_lifecycle.py runs it; this workload does not)",
    ("", "events", "patch"): "raises the count of a study's aggregate per-trial Event, from "
    "the 11th Event of one reason on (tests/integration/test_operator_events.py runs it; "
    "these studies have fewer trials)",
    ("", "events", "get"): "a restarted operator reads the count of the aggregate Event it "
    "left (tests/integration/test_operator_events.py runs it; this workload does not restart)",
    ("batch", "jobs", "get"): "a direct read of a Job the watch has not shown for "
    "KUBETUNE_EXPECTATION_SECONDS, before it may count as deleted "
    "(tests/reliability/test_watch_lag.py runs it; a healthy watch never needs it)",
}


@dataclasses.dataclass
class Release:
    """A chart release installed into ``namespace`` with ``values`` (``--set`` items)."""

    cluster: Cluster
    helm: Path
    namespace: str
    values: list[str]

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that is the chart's ServiceAccount (a real token), via the proxy."""
        return self.cluster.token_kubeconfig(path, self.namespace, SERVICE_ACCOUNT)

    def operator_command(self, tmp: Path, storage_url: str) -> tuple[list[str], dict[str, str]]:
        """argv and env of the installed Deployment's container, ports made free and local.

        Env values come from the live Deployment: Secrets are read as the kubelet would read
        them (so a wrong Secret name or key in the chart fails here), ``fieldRef`` resolved.
        The report URL is the only override: the in-cluster Service name does not resolve here.
        """
        api = self.cluster.api
        deployment = api.request(
            "GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{DEPLOYMENT}"
        )
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            source = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = api.get("secrets", ref["name"], self.namespace)
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[item["name"]] = self.namespace
            else:
                raise AssertionError(f"the test cannot resolve env {item}")
        assert env["KUBETUNE_STORAGE_URL"] == storage_url
        report = free_port()
        env.update(
            KUBETUNE_REPORT_URL=f"http://127.0.0.1:{report}",
            KUBECONFIG=str(self.kubeconfig(tmp / "operator.kubeconfig")),
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            HOME=str(tmp),
            TMPDIR=str(tmp),
            PYTHONPATH=str(REPO / "operator"),
        )
        argv = [
            sys.executable,
            "-m",
            "kubetune.cli",
            "operator",
            *container["args"],
            f"--health-port={free_port()}",
            f"--metrics-port={free_port()}",
            f"--report-port={report}",
        ]
        return argv, env


@contextlib.contextmanager
def installed(
    cluster: Cluster, helm: Path, storage_url: str, values: list[str]
) -> Iterator[Release]:
    """``helm install`` into a fresh namespace; ``helm uninstall`` afterwards (cluster-scoped
    objects outlive the namespace the next test's reset deletes)."""
    namespace = f"kt-{uuid.uuid4().hex[:6]}"
    cluster.api.ensure_namespace(namespace)
    cluster.plane.kubectl(
        "create",
        "secret",
        "generic",
        DB_SECRET,
        "-n",
        namespace,
        f"--from-literal=storage-url={storage_url}",
    )
    kube = ["--namespace", namespace, "--kubeconfig", str(cluster.plane.kubeconfig)]
    run_helm(helm, ["install", RELEASE, str(CHART), *kube, *value_args(set_values=values)])
    try:
        yield Release(cluster, helm, namespace, values)
    finally:
        with contextlib.suppress(HelmError):
            run_helm(helm, ["uninstall", RELEASE, *kube])


@contextlib.contextmanager
def operator_running(release: Release, tmp: Path, storage_url: str) -> Iterator[float]:
    """``kubetune operator`` as the chart runs it; yields the wall time it was started."""
    argv, env = release.operator_command(tmp, storage_url)
    log = tmp / "operator.log"
    with log.open("wb") as out:
        started = time.time()
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        print("--- operator log (tail) ---\n" + log.read_text(errors="replace")[-6000:])


def used_permissions(requests: list[RequestRecord]) -> set[Permission]:
    """(apiGroup, resource[/subresource], verb) of every resource request in ``requests``."""
    return {
        (r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb)
        for r in requests
        if r.resource
    }


def _state(cluster: Cluster, name: str, namespace: str) -> str | None:
    obj = cluster.api.find("tuningstudies", name, namespace) or {}
    return (obj.get("status") or {}).get("state")


def _wait_state(cluster: Cluster, name: str, namespace: str, state: str) -> dict[str, Any]:
    cluster.api.wait_for(
        lambda: _state(cluster, name, namespace) == state,
        timeout=90,
        message=f"study {namespace}/{name} never reached {state}:\n{cluster.describe(namespace)}",
    )
    return dict(cluster.api.get("tuningstudies", name, namespace)["status"])


def run_studies(cluster: Cluster, tmp: Path, namespace: str, storage_url: str) -> None:
    """A study to the end, a study whose trial fails (log tail, Events), then both deleted."""
    trainer = trainer_file(tmp)
    good = study_manifest("good", trainer, max_trials=3, parallelism=2)
    broken = study_manifest("broken", trainer, mode="fail", max_trials=2, max_failed=1)
    cluster.api.create("tuningstudies", good, namespace)
    cluster.api.create("tuningstudies", broken, namespace)
    done = _wait_state(cluster, "good", namespace, "Succeeded")
    assert done["trials"]["completed"] == 3
    failed = _wait_state(cluster, "broken", namespace, "Failed")
    study = optuna.load_study(study_name=failed["optunaStudyName"], storage=storage_url)
    messages = [t.user_attrs.get("kubetune:fail_message", "") for t in study.trials]
    assert any("boom in trial" in m for m in messages), messages  # the log tail was read
    reasons = {e.get("reason") for e in cluster.api.list("events", namespace)}
    assert {"TrialLaunched", "TrialFailed"} <= reasons, reasons
    for name in ("good", "broken"):
        assert cluster.api.list("jobs", namespace, f"kubetune.io/study={name}")
        cluster.api.delete("tuningstudies", name, namespace)
    cluster.api.wait_for(
        lambda: not cluster.api.list("tuningstudies", namespace),
        timeout=60,
        message="the operator did not finish deleting the studies",
    )
    # The operator deletes the Jobs itself (so `jobs delete` is among the calls compared).
    cluster.api.wait_for(
        lambda: not cluster.api.list("jobs", namespace), timeout=30, message="Jobs remain"
    )


def assert_rbac_is_exactly_what_was_used(cluster: Cluster, values: list[str]) -> None:
    requests = list(cluster.api.requests)
    used = used_permissions(requests)
    granted = rendered_permissions(set_values=values)
    print(f"\nused: {sorted(used)}\ngranted: {sorted(granted)}")
    refused = sorted({f"{r.verb} {r.path}" for r in requests if r.status == 403})
    assert not refused, f"refused (403): {refused}"
    assert used <= granted, f"used but not granted: {sorted(used - granted)}"
    unused = granted - used - set(UNEXERCISED_GRANTS)
    assert not unused, f"granted but never used: {sorted(unused)}"
    stale = set(UNEXERCISED_GRANTS) & used
    assert not stale, f"listed as unexercised, yet used: {sorted(stale)}"


@pytest.mark.slow
def test_namespaces_mode_grants_exactly_what_the_operator_uses(
    cluster: Cluster, helm: Path, fresh_database: str, tmp_path: Path
) -> None:
    with installed(cluster, helm, fresh_database, BASE_VALUES) as release:
        with operator_running(release, tmp_path, fresh_database):
            run_studies(cluster, tmp_path, release.namespace, fresh_database)
        assert_rbac_is_exactly_what_was_used(cluster, BASE_VALUES)
        # Least privilege: the namespaced operator never asks for anything cluster-scoped.
        cluster_scoped = [r for r in cluster.api.requests if r.resource and r.namespace is None]
        assert not cluster_scoped, sorted({(r.resource, r.verb) for r in cluster_scoped})


@pytest.mark.slow
def test_all_namespaces_mode_grants_exactly_what_the_operator_uses(
    cluster: Cluster, helm: Path, fresh_database: str, tmp_path: Path
) -> None:
    team = f"team-{uuid.uuid4().hex[:6]}"  # studies live outside the release namespace
    cluster.api.ensure_namespace(team)
    with installed(cluster, helm, fresh_database, ALL_NAMESPACES) as release:
        with operator_running(release, tmp_path, fresh_database):
            run_studies(cluster, tmp_path, team, fresh_database)
        assert_rbac_is_exactly_what_was_used(cluster, ALL_NAMESPACES)


def _created(obj: dict[str, Any]) -> float:
    stamp = obj["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _logged_at(log: str, text: str) -> float | None:
    """Wall time of the first operator log line containing ``text`` (kopf logs local time)."""
    for line in log.splitlines():
        if text in line and line.startswith("["):
            return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


@pytest.mark.slow
def test_namespaced_operator_launches_a_waiting_study_without_a_startup_stall(
    cluster: Cluster, helm: Path, fresh_database: str, tmp_path: Path
) -> None:
    """With a Role only, kopf's namespace scan (``list namespaces``) is forbidden and retried
    for about a minute (62 s measured) before anything is served; the operator must not scan.

    The time to the first Job is printed, not asserted: on a loaded machine the interpreter's
    imports alone vary by seconds. The scan itself is what is asserted absent.
    """
    with installed(cluster, helm, fresh_database, BASE_VALUES) as release:
        ns = release.namespace
        manifest = study_manifest("waiting", trainer_file(tmp_path), max_trials=1)
        cluster.api.create("tuningstudies", manifest, ns)
        with operator_running(release, tmp_path, fresh_database) as started:
            (job,) = cluster.api.wait_for(
                lambda: cluster.api.list("jobs", ns, "kubetune.io/study=waiting"),
                timeout=120,
                interval=0.05,
                message="the operator never launched the waiting study's first trial",
            )
            seen = time.time()
            _wait_state(cluster, "waiting", ns, "Succeeded")
        ready = _logged_at((tmp_path / "operator.log").read_text(), "'startup' succeeded")
        # creationTimestamp has whole seconds: the poll above is the finer measure.
        print(
            f"\nfirst trial Job seen {seen - started:.2f} s after the process started "
            f"(creationTimestamp {_created(job) - started:+.0f} s), "
            f"{seen - ready if ready else float('nan'):.2f} s after kopf's startup handlers"
        )
        assert not cluster.api.requests_for("namespaces"), "the operator scanned namespaces"
        refused = [r for r in cluster.api.requests if r.status == 403]
        assert not refused, [(r.verb, r.path) for r in refused]
