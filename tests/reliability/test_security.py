"""Security properties as tests: what trial Jobs carry, what never leaks, what RBAC grants.

The leak and RBAC checks share one operator run (a module fixture) that walks the paths where
secrets could escape: trials that complete and fail, an invalid study, a PostgreSQL outage
(connection errors carry the URL), a study deletion. Then everything the emulated API ever
stored (objects, status, Events) and every line the operator logged is searched.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Cluster, PostgresServer
from harness.postgres import PASSWORD
from kubetune.jobs import render_job
from kubetune.spec import parse_manifest
from reliability.world import (
    NS,
    PLURAL,
    TOKEN_KEY,
    World,
    study_manifest,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CHART_VALUES = REPO / "charts" / "kubetune" / "values.yaml"
ALL_NAMESPACES = REPO / "charts" / "kubetune" / "ci" / "all-namespaces-values.yaml"


def _storage_secret_names() -> set[str]:
    """Names the chart may give the storage and token-key Secrets (rendered and existing)."""
    values = yaml.safe_load(CHART_VALUES.read_text())
    names = {"kubetune-storage", "kubetune-token-key", "kubetune-postgresql"}
    for section in ("storage", "tokenKey", "postgresql"):
        existing = (values.get(section) or {}).get("existingSecret")
        if isinstance(existing, str) and existing:
            names.add(existing)
    return names


def _secret_refs(obj: Any) -> list[dict[str, Any]]:
    """Every secretKeyRef / secretRef / secret volume found anywhere in ``obj``."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("secretKeyRef", "secretRef", "secret") and isinstance(value, dict):
                found.append(value)
            found += _secret_refs(value)
    elif isinstance(obj, list):
        for item in obj:
            found += _secret_refs(item)
    return found


# ---------------------------------------------------------------------------------------------
# Rendered trial Jobs


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_trial_jobs_of_every_example_carry_no_storage_credentials(example: Path) -> None:
    ts = parse_manifest(yaml.safe_load(example.read_text()))
    storage_url = f"postgresql+psycopg2://kubetune:{PASSWORD}@db.kubetune:5432/kubetune"
    job = render_job(
        {"name": ts.metadata.name, "namespace": "team-a", "uid": "uid-1"},
        ts.spec,
        3,
        1,
        {"lr": 0.01},
        report_url="http://kubetune.kubetune:8082",
        token="1." + "ab" * 32,
        optuna_study_name=f"team-a.{ts.metadata.name}.uid-1",
    )
    text = json.dumps(job)
    for needle in (PASSWORD, TOKEN_KEY, storage_url, "postgresql", "psycopg", "sqlite:"):
        assert needle not in text, f"{needle!r} found in the trial Job of {example.name}"
    env_names = {e["name"] for c in job["spec"]["template"]["spec"]["containers"] for e in c["env"]}
    assert not env_names & {"KUBETUNE_STORAGE_URL", "KUBETUNE_TOKEN_KEY"}
    refs = _secret_refs(job)
    forbidden = _storage_secret_names()
    assert not [r for r in refs if {r.get("name"), r.get("secretName")} & forbidden], refs


def test_a_template_cannot_smuggle_in_the_operators_variables() -> None:
    """A template that asks for the storage URL by our env names gets ours, not its own."""
    manifest = study_manifest("smuggle", result="Reporter")
    container = manifest["spec"]["trial"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "KUBETUNE_TRIAL_TOKEN", "value": "attacker-chosen"},
        {"name": "KUBETUNE_STUDY", "value": "someone-else"},
    ]
    ts = parse_manifest(manifest)
    job = render_job(
        {"name": "smuggle", "namespace": NS, "uid": "u"},
        ts.spec,
        0,
        0,
        {},
        report_url="http://r:8082",
        token="0." + "cd" * 32,
        optuna_study_name="x",
    )
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name: dict[str, list[str]] = {}
    for e in env:
        by_name.setdefault(e["name"], []).append(e.get("value"))
    assert by_name["KUBETUNE_TRIAL_TOKEN"] == ["0." + "cd" * 32]
    assert by_name["KUBETUNE_STUDY"] == ["smuggle"]


HARDENED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
HARDENED_CONTAINER = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_trial_job_keeps_the_templates_security_context(example: Path) -> None:
    raw = yaml.safe_load(example.read_text())
    template = raw["spec"]["trial"]["template"]
    template["spec"]["securityContext"] = copy.deepcopy(HARDENED_POD)
    template["spec"]["automountServiceAccountToken"] = False
    template["spec"]["serviceAccountName"] = "trainer-minimal"
    template["spec"]["hostNetwork"] = False
    template["spec"].setdefault("volumes", []).append({"name": "tmp", "emptyDir": {}})
    for c in template["spec"]["containers"]:
        c["securityContext"] = copy.deepcopy(HARDENED_CONTAINER)
        c["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    ts = parse_manifest(raw)
    job = render_job(
        {"name": ts.metadata.name, "namespace": NS, "uid": "u"},
        ts.spec,
        0,
        0,
        {},
        report_url="http://r:8082",
        token="0." + "ab" * 32,
        optuna_study_name="x",
    )
    pod = job["spec"]["template"]["spec"]
    wanted = template["spec"]
    for key in (
        "securityContext",
        "automountServiceAccountToken",
        "serviceAccountName",
        "hostNetwork",
        "volumes",
    ):
        assert pod.get(key) == wanted[key], key
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    for rendered, original in zip(pod["containers"], wanted["containers"], strict=True):
        assert rendered["securityContext"] == original["securityContext"]
        assert rendered["volumeMounts"] == original["volumeMounts"]
        assert rendered["image"] == original["image"]
    assert not pod.get("initContainers") and not pod.get("ephemeralContainers")


# ---------------------------------------------------------------------------------------------
# One operator run walking the risky paths


@dataclasses.dataclass
class Scenario:
    world: World
    observed: set[tuple[str, str, str]]


@pytest.fixture(scope="module")
def scenario(
    postgres_server: PostgresServer,
    cluster_session: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("security")
    if not postgres_server.is_running():
        postgres_server.start()
    db = postgres_server.create_database("sec")
    cluster = cluster_session
    cluster.reset()
    world = World(cluster, postgres_server.url(db), tmp)
    try:
        _run_scenario(world, postgres_server)
        observed = {
            (r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb)
            for r in cluster.api.requests
            if r.resource
        }
        yield Scenario(world, observed)
    finally:
        world.stop_operator()
        if not postgres_server.is_running():
            postgres_server.start()
        postgres_server.drop_database(db)


def _run_scenario(world: World, pg: PostgresServer) -> None:
    api = world.api
    world.start_operator()
    world.apply(study_manifest("fine", max_trials=3, steps=2))
    world.apply(study_manifest("boom", max_trials=2, exit_code=3, max_failed=5))
    term = study_manifest("term", max_trials=2, result="TerminationMessage")
    world.apply(term)
    invalid = study_manifest("bad-space")
    invalid["spec"]["enqueueTrials"] = [{"nope": 1}]
    world.apply(invalid)  # warm-start names are checked by the operator only (docs/validation.md)
    world.wait(lambda: world.status("bad-space").get("state") == "Invalid", "bad-space not Invalid")
    world.wait_finished("fine")
    world.wait_finished("boom")
    world.wait_finished("term")
    # A short outage while a study is running (its trial holds until after the outage):
    # errors from the driver carry the URL.
    gate = world.tmp / "gate"
    gate.mkdir()
    world.apply(study_manifest("outage", max_trials=1, parallelism=1, hold=(gate, "0", 0)))
    world.wait_reached(gate, "0")
    pg.stop("immediate")
    try:
        world.wait(
            lambda: (world.condition("outage", "StorageReachable") or {}).get("status") == "False",
            "StorageReachable never went False",
        )
    finally:
        pg.start()
        world.release(gate)
    world.wait_finished("outage")
    # Deletion: the operator fails running trials, deletes Jobs, removes its finalizer.
    api.delete(PLURAL, "fine", NS)
    world.wait(lambda: api.find(PLURAL, "fine", NS) is None, "fine was not deleted")


# RBAC (grants == calls, with a real ServiceAccount token): tests/chart/test_chart_install.py.


def test_no_secret_in_logs_status_events_or_objects(scenario: Scenario) -> None:
    world = scenario.world
    logs = world.logs()
    stored = world.everything_stored()
    assert "Started kubetune operator" in logs  # the log is really captured
    assert any(e.get("reason") == "InvalidSpec" for e in world.events())  # Events really exist
    for secret in (PASSWORD, TOKEN_KEY):
        assert secret not in logs, f"{secret!r} leaked into the operator log"
        assert secret not in stored, f"{secret!r} leaked into an object, status or Event"
    assert "postgresql+psycopg2://" not in stored
    assert "postgresql+psycopg2://" not in logs
    for event in world.events():
        assert PASSWORD not in json.dumps(event)
    # The storage outage did surface, without its URL.
    outage = world.study("outage")
    assert "StorageReachable" in json.dumps(outage["status"]["conditions"])


def test_pods_of_the_scenario_never_saw_storage_credentials(scenario: Scenario) -> None:
    """What the kubelet stand-in really ran: the env of every trial pod, from the stored Jobs."""
    created = [e.obj for e in scenario.world.cluster.history if e.key == "jobs.batch"]
    assert created
    for job in created:
        text = json.dumps(job["spec"])
        assert PASSWORD not in text and TOKEN_KEY not in text
        assert "KUBETUNE_STORAGE_URL" not in text and "KUBETUNE_TOKEN_KEY" not in text
