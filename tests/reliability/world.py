"""The reliability suite's world: the operator as a real process, a stand-in trainer.

``KUBETUNE_SOAK=1`` (``scripts/soak``) raises the iteration counts; CI runs the short mode.
Every test asserts on the world afterwards (Jobs, status, Events, trials in PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from harness import Cluster, OperatorProcess
from kubetune.ledger import optuna_study_name
from support import manifests
from support.hold import WAIT_SECONDS

optuna.logging.set_verbosity(optuna.logging.WARNING)

HERE = Path(__file__).resolve().parent
FAKE_TRAINER = HERE / "fake_trainer.py"
SOAK = os.environ.get("KUBETUNE_SOAK", "") not in ("", "0")
NS = "default"
TOKEN_KEY = "tok-Key-5b8e2d41a9c3f7e6"  # distinctive so leak checks can grep for it
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "tuningstudies"
FINISHED = ("Succeeded", "Failed")


def soak(ci: int, soak_value: int) -> int:
    """An iteration count: small in CI, large under ``KUBETUNE_SOAK=1``."""
    return soak_value if SOAK else ci


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def study_manifest(
    name: str,
    *,
    max_trials: int = 6,
    parallelism: int = 2,
    max_retries: int = 2,
    steps: int = 3,
    sleep: float = 0.1,
    exit_code: int = 0,
    result: str = "Reporter",
    max_failed: int | None = None,
    search_space: list[dict[str, Any]] | None = None,
    namespace: str = NS,
    hold: tuple[Path, str, int] | None = None,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A TuningStudy whose trials run :mod:`fake_trainer` (a local process per pod);
    ``hold=(folder, "1,2", step)`` makes those trials wait at that step; ``extra_args`` go to
    the fake trainer as they are (see fake_trainer)."""
    args = ["--steps", str(steps), "--sleep", str(sleep)]
    if hold is not None:
        args += ["--hold", str(hold[0]), "--hold-trials", hold[1], "--hold-at", str(hold[2])]
    if exit_code:
        args += ["--exit", str(exit_code)]
    args += extra_args
    budget: dict[str, Any] = {"maxTrials": max_trials, "parallelism": parallelism}
    if max_failed is not None:
        budget["maxFailedTrials"] = max_failed
    return manifests.study_manifest(
        name,
        namespace=namespace,
        objectives=[{"name": "score", "direction": "maximize"}],
        search_space=search_space
        or [
            {"name": "lr", "float": {"low": 0.001, "high": 0.1, "log": True}},
            {"name": "layers", "int": {"low": 1, "high": 4}},
            {"name": "opt", "categorical": {"choices": ["sgd", "adam"]}},
        ],
        sampler={"type": "Random", "seed": 3},
        budget=budget,
        trial={"maxRetries": max_retries, "result": {"from": result}},
        container={
            "name": "trainer",
            "image": "kubetune-fake-trainer:test",
            "command": ["python", str(FAKE_TRAINER), *args],
        },
    )


@dataclass
class World:
    """One emulated cluster, one database, and the operator as a killable process."""

    cluster: Cluster
    storage_url: str
    tmp: Path
    report_port: int = field(default_factory=free_port)
    operator: OperatorProcess | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> Any:
        return self.cluster.api

    def env(self) -> dict[str, str]:
        return {
            "KUBETUNE_STORAGE_URL": self.storage_url,
            "KUBETUNE_TOKEN_KEY": TOKEN_KEY,
            # A fixed port: trainers keep the report URL across operator restarts.
            "KUBETUNE_REPORT_PORT": str(self.report_port),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_RESYNC_SECONDS": "1",
            "KUBETUNE_IMAGE_PULL_GRACE_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def start_operator(self) -> OperatorProcess:
        assert (
            self.operator is None
            or self.operator.proc is None
            or (self.operator.proc.poll() is not None)
        ), "an operator is already running"
        self.starts += 1
        self.operator = OperatorProcess(
            "module:kubetune.handlers",
            self.cluster.kubeconfig,
            env=self.env(),
            log=self.tmp / f"operator-{self.starts}.log",
        ).start()
        return self.operator

    def kill_operator(self) -> None:
        if self.operator is not None:
            self.operator.kill()

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def operator_alive(self) -> bool:
        return bool(self.operator and self.operator.proc and self.operator.proc.poll() is None)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("operator-*.log"))
        )

    # ---- the world ----------------------------------------------------------------------

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        ns = manifest["metadata"].get("namespace", NS)
        self.api.ensure_namespace(ns)
        return dict(self.api.create(PLURAL, manifest, ns))

    def study(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return dict(self.api.get(PLURAL, name, namespace))

    def status(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return dict(self.study(name, namespace).get("status") or {})

    def condition(self, name: str, ctype: str, namespace: str = NS) -> dict[str, Any] | None:
        for cond in self.status(name, namespace).get("conditions") or []:
            if cond.get("type") == ctype:
                return dict(cond)
        return None

    def wait_finished(self, name: str, timeout: float = WAIT_SECONDS, namespace: str = NS) -> Any:
        def done() -> Any:
            status = self.status(name, namespace)
            if status.get("state") in FINISHED and not (status.get("trials") or {}).get("running"):
                return status
            return None

        return self.wait(done, f"study {namespace}/{name} did not finish", timeout)

    def wait(
        self, predicate: Callable[[], Any], message: str, timeout: float = WAIT_SECONDS
    ) -> Any:
        """Poll ``predicate`` until truthy; past ``timeout`` (generous: a loaded machine is
        slow) fail with ``message``, the time waited and the operator log's tail."""
        try:
            return self.api.wait_for(predicate, timeout=timeout, interval=0.1, message=message)
        except TimeoutError as exc:
            tail = self.logs()[-4000:]
            raise AssertionError(f"{exc}\n--- operator log tail ---\n{tail}") from None

    def release(self, gate: Path) -> None:
        """Let every fake trainer held at ``gate`` (``study_manifest(hold=...)``) go on."""
        (gate / "release").touch()

    def wait_reached(self, gate: Path, trials: list[str] | str) -> None:
        """Wait until the held trials reached their hold point (running, and staying so)."""
        names = [trials] if isinstance(trials, str) else trials
        self.wait(
            lambda: all((gate / f"reached-{n}").exists() for n in names),
            f"trials {names} never reached their hold point in {gate}",
        )

    def jobs(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return [
            j
            for j in self.api.list("jobs", namespace)
            if (j["metadata"].get("labels") or {}).get("kubetune.io/study") == name
        ]

    def created_job_names(self, namespace: str = NS) -> list[str]:
        """Every Job name the API ever accepted a create for (from the watch history)."""
        return [
            e.obj["metadata"]["name"]
            for e in self.cluster.history
            if e.key == "jobs.batch"
            and e.type == "ADDED"
            and e.obj["metadata"].get("namespace") == namespace
        ]

    def events(self, namespace: str = NS) -> list[dict[str, Any]]:
        modern = self.api.resource("events", group="events.k8s.io")
        return [*self.api.list("events", namespace), *self.api.list(modern, namespace)]

    def events_for(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        """The Events about one object (core and events.k8s.io), selected by the API."""
        modern = self.api.resource("events", group="events.k8s.io")
        return [
            *self.api.list("events", namespace, None, f"involvedObject.name={name}"),
            *self.api.list(modern, namespace, None, f"regarding.name={name}"),
        ]

    def trials(self, name: str, namespace: str = NS) -> list[optuna.trial.FrozenTrial]:
        """The trials in PostgreSQL, read with a fresh connection."""
        uid = self.study(name, namespace)["metadata"]["uid"]
        storage = optuna.storages.RDBStorage(
            self.storage_url, engine_kwargs={"poolclass": _null_pool()}
        )
        try:
            study = optuna.load_study(
                study_name=optuna_study_name(namespace, name, uid), storage=storage
            )
            return list(study.get_trials(deepcopy=False))
        finally:
            with contextlib.suppress(Exception):
                storage.engine.dispose()

    def everything_stored(self) -> str:
        """Every object the apiserver held during the test (as the watches saw them) and every
        body the operator wrote, as one JSON text (leak checks)."""
        seen = [json.dumps(e.obj, sort_keys=True) for e in self.cluster.history]
        return "\n".join([*seen, *self.cluster.proxy.bodies])


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def wait_seconds(seconds: float) -> None:
    """Let time pass on purpose (an outage's length), never as an assertion."""
    time.sleep(seconds)
