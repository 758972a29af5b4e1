"""Helpers for the operator scenarios: a stand-in trainer, manifests, and world readers.

The stand-in trainer is a tiny Python script run by the fake kubelet as a real process. It
uses the real trainer SDK (``kubetune.trial``) against the operator's real report API, or
writes a termination message. What it does is chosen by the ``MODE`` env var of the template:
``ok`` (report three steps, complete), ``fail`` (print a traceback-like line, exit 3),
``noresult`` (exit 0 without completing), ``wait`` (wait for the file ``$GO_FILE``, then ok).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import Cluster, OperatorProcess, run_kopf
from support import manifests
from support.hold import WAIT_SECONDS
from support.trials import launched

TRAINER = r"""
import json, math, os, sys, time
mode = os.environ.get("MODE", "ok")
params = json.loads(os.environ["KUBETUNE_PARAMS"])
value = round(1.0 - abs(math.log10(float(params["lr"])) + 2.0) / 4.0, 6)
if mode == "wait":
    go = os.environ["GO_FILE"]
    while not os.path.exists(go):
        time.sleep(0.05)
if mode == "fail":
    print("Traceback (most recent call last):")
    print("ValueError: boom in trial", os.environ["KUBETUNE_TRIAL_NUMBER"])
    sys.exit(3)
if mode == "noresult":
    sys.exit(0)
if "KUBETUNE_REPORT_URL" in os.environ:
    from kubetune import trial
    for step in range(3):
        trial.report(value * (step + 1) / 3, step)
    trial.complete(value)
else:
    path = os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log")
    with open(path, "w") as f:
        json.dump({"values": [value]}, f)
"""


def trainer_file(tmp: Path) -> Path:
    path = tmp / "standin_trainer.py"
    path.write_text(TRAINER)
    return path


def study_manifest(
    name: str,
    trainer: Path,
    *,
    max_trials: int = 4,
    parallelism: int = 2,
    mode: str = "ok",
    result: str = "Reporter",
    extra_env: dict[str, str] | None = None,
    max_failed: int | None = None,
    max_retries: int = 2,
    enqueue: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    env = [{"name": "MODE", "value": mode}]
    env += [{"name": k, "value": v} for k, v in (extra_env or {}).items()]
    budget: dict[str, Any] = {"maxTrials": max_trials, "parallelism": parallelism}
    if max_failed is not None:
        budget["maxFailedTrials"] = max_failed
    return manifests.study_manifest(
        name,
        search_space=[
            {"name": "lr", "float": {"low": 1.0e-4, "high": 1.0, "log": True}},
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adamw"]}},
        ],
        sampler={"type": "Random", "seed": 1},
        budget=budget,
        enqueue=enqueue or [],
        trial={
            "maxRetries": max_retries,
            "activeDeadlineSeconds": 120,
            "result": {"from": result},
        },
        container={
            "name": "trainer",
            "image": "standin:1",
            "command": ["python", str(trainer)],
            "env": env,
        },
    )


def operator_env(database_url: str, *, resync: float = 2.0) -> dict[str, str]:
    return {
        "KUBETUNE_STORAGE_URL": database_url,
        "KUBETUNE_TOKEN_KEY": "test-key-0123456789abcdef",
        "KUBETUNE_REPORT_PORT": "0",
        "KUBETUNE_METRICS_PORT": "-1",
        "KUBETUNE_RESYNC_SECONDS": str(resync),
        "KUBETUNE_IMAGE_PULL_GRACE_SECONDS": "2",
    }


def run_operator_thread(namespace: str | None = None) -> Any:
    """kopf for real, in a thread, with ``kubetune.handlers`` (config from the environment)."""
    return run_kopf("module:kubetune.handlers", namespace=namespace, timeout=WAIT_SECONDS)


def operator_process(cluster: Cluster, database_url: str, log: Path) -> OperatorProcess:
    """The operator as a child process (report API on a fixed free port, since it restarts)."""
    from harness.postgres import free_port

    env = operator_env(database_url)
    env["KUBETUNE_REPORT_PORT"] = str(free_port())
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "operator"), os.environ.get("PYTHONPATH", "")]
    )
    return OperatorProcess("module:kubetune.handlers", cluster.kubeconfig, env=env, log=log)


def status(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, Any]:
    obj = cluster.api.find("tuningstudies", name, namespace)
    return dict((obj or {}).get("status") or {})


def condition(
    cluster: Cluster, name: str, ctype: str, namespace: str = "default"
) -> dict[str, Any]:
    for c in status(cluster, name, namespace).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def wait_state(
    cluster: Cluster,
    name: str,
    state: str,
    namespace: str = "default",
    timeout: float = WAIT_SECONDS,
) -> dict[str, Any]:
    try:
        cluster.api.wait_for(
            lambda: status(cluster, name, namespace).get("state") == state,
            timeout=timeout,
            message=f"study {namespace}/{name} never reached {state}",
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its status: {status(cluster, name, namespace)}") from None
    return status(cluster, name, namespace)


def events(cluster: Cluster, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.api.list("events", namespace)
        if (e.get("involvedObject") or {}).get("name") == name
    ]


def jobs(cluster: Cluster, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    return cluster.api.list("jobs", namespace, label_selector=f"kubetune.io/study={name}")


def optuna_trials(database_url: str, study_status: dict[str, Any]) -> list[Any]:
    """The study's launched trials (see :func:`launched`), as its status counts them."""
    study = optuna.load_study(study_name=study_status["optunaStudyName"], storage=database_url)
    return launched(study.get_trials(deepcopy=False))


def by_state(trials: list[Any]) -> dict[str, int]:
    """Launched trials per state, as the status counts them."""
    out: dict[str, int] = {}
    for t in launched(trials):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


class ActiveJobTracker:
    """Records the most trial Jobs of one study active at once, from the API's own events."""

    def __init__(self, cluster: Cluster, study: str) -> None:
        self.study = study
        self.active: set[str] = set()
        self.max_active = 0
        cluster.api.add_listener(self._on_event)

    def _on_event(self, key: str, kind: str, obj: dict[str, Any], old: Any) -> None:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != "Job":
            return
        if (meta.get("labels") or {}).get("kubetune.io/study") != self.study:
            return
        name = str(meta.get("name"))
        done = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )
        if kind == "DELETED" or done:
            self.active.discard(name)
        else:
            self.active.add(name)
        self.max_active = max(self.max_active, len(self.active))


def terminal_states() -> tuple[TrialState, ...]:
    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# -- Added for the end-to-end scenarios (test_operator_e2e.py, test_operator_prometheus.py) ----

CURVE_TRAINER = r"""
import json, math, os, sys, time
from pathlib import Path
from kubetune import trial
params = json.loads(os.environ["KUBETUNE_PARAMS"])
number = os.environ["KUBETUNE_TRIAL_NUMBER"]
value = round(1.0 - abs(math.log10(float(params["lr"])) + 2.0) / 4.0, 6)
steps = int(os.environ.get("STEPS", "4"))
pause = float(os.environ.get("STEP_SECONDS", "0.3"))
progress = os.environ.get("PROGRESS_DIR")
gate = os.environ.get("GATE_FILE")
gate_after = int(os.environ.get("GATE_AFTER_STEP", "-1"))
if os.environ.get("MODE") == "fail" or number in os.environ.get("FAIL_TRIALS", "").split(","):
    print("ValueError: boom in trial", number)
    sys.exit(3)
for step in range(steps):
    if trial.report(value, step):
        trial.pruned()
        sys.exit(0)
    if progress:
        Path(progress, f"{number}.{step}").touch()
    if step == gate_after and gate:
        while not os.path.exists(gate):
            time.sleep(0.05)
    time.sleep(pause)
trial.complete(value)
"""


def curve_trainer_file(tmp: Path) -> Path:
    """A Reporter-mode stand-in: reports its (constant) value at ``STEPS`` steps, obeys the
    pruner, optionally waits for ``GATE_FILE`` after step ``GATE_AFTER_STEP``, marks each
    reported step as a file ``<trial>.<step>`` in ``PROGRESS_DIR``; ``MODE=fail`` (or the trial's
    number in the comma list ``FAIL_TRIALS``) exits 3 at once.

    Its value is ``1 - |log10(lr) + 2| / 4``: ``lr=0.01`` gives 1.0, ``lr=1e-4`` gives 0.5.
    """
    path = tmp / "curve_trainer.py"
    path.write_text(CURVE_TRAINER)
    return path


def operator_process_on(
    cluster: Cluster,
    database_url: str,
    log: Path,
    *,
    report_port: int,
    metrics_port: int = -1,
    resync: float = 2.0,
) -> OperatorProcess:
    """The operator as a child process on fixed ports, so a restart keeps the report URL."""
    env = operator_env(database_url, resync=resync)
    env["KUBETUNE_REPORT_PORT"] = str(report_port)
    env["KUBETUNE_METRICS_PORT"] = str(metrics_port)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "operator"), os.environ.get("PYTHONPATH", "")]
    )
    return OperatorProcess("module:kubetune.handlers", cluster.kubeconfig, env=env, log=log)


def stored_pod_envs(cluster: Cluster, name: str, namespace: str = "default") -> list[str]:
    """Every env entry (as text) of the study's stored Jobs and Pods, all containers."""
    out: list[str] = []
    objects = jobs(cluster, name, namespace) + cluster.api.list(
        "pods", namespace, label_selector=f"kubetune.io/study={name}"
    )
    for obj in objects:
        spec = (obj["spec"].get("template") or {}).get("spec") or obj["spec"]
        for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            out += [str(e) for e in c.get("env") or []]
            out += [str(e) for e in c.get("envFrom") or []]
    return out


__all__ = [
    "ActiveJobTracker",
    "Iterator",
    "by_state",
    "condition",
    "curve_trainer_file",
    "events",
    "jobs",
    "operator_env",
    "operator_process",
    "operator_process_on",
    "optuna_trials",
    "run_operator_thread",
    "status",
    "stored_pod_envs",
    "study_manifest",
    "terminal_states",
    "trainer_file",
    "wait_state",
]
