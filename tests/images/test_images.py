"""The built images do what the chart and the operator expect of them.

Operator image: ``kubetune`` runs, as a numeric non-root user, with only the operator's own
dependencies; with a read-only root filesystem (only ``/tmp`` writable, as the chart mounts it)
``kubetune operator`` starts against the real control plane, answers ``/healthz`` and creates
a trial Job; every sampler the CRD accepts can be built and used, except GP (see
``UNAVAILABLE_IN_OPERATOR_IMAGE``). Trainer image: a 2-epoch training on the bundled digits
data writes its result as a termination message, as a kubelet would read it.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.control_plane import ControlPlane

from ._engine import OPERATOR_IMAGE, REPO, TRAINER_IMAGE, required_engine
from ._kube import answers, self_contained_kubeconfig

ENGINE = required_engine(OPERATOR_IMAGE, TRAINER_IMAGE)

CRD_FILE = REPO / "crds" / "kubetune.io_tuningstudies.yaml"
DEPLOYMENT_TEMPLATE = REPO / "charts" / "kubetune" / "templates" / "deployment.yaml"
OPERATOR_ENTRYPOINT = ["kubetune", "operator"]
TRAINER_ENTRYPOINT = ["python", "-m", "kubetune_trainer"]
#: The operator image's size limit (issue 14), in the engines' unit (10**6 bytes).
OPERATOR_MAX_MB = 400

#: KNOWN GAP (issue 14): the CRD accepts ``GP``, but GPSampler needs torch and the operator
#: image ships without it (torch CPU would add ~750 MB: 384 MB -> 1.13 GB), so ``make_sampler``
#: raises SamplerUnavailableError and such a study cannot run on the operator image. Whether
#: the image gets torch is decided separately; until then these tests pin what the code does.
UNAVAILABLE_IN_OPERATOR_IMAGE = {"GP": "SamplerUnavailableError"}


def _crd_samplers() -> list[str]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return list(spec["sampler"]["properties"]["type"]["enum"])


def _chart_container_ports() -> set[int]:
    return {int(p) for p in re.findall(r"containerPort:\s*(\d+)", DEPLOYMENT_TEMPLATE.read_text())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- operator image: static


def test_operator_runs_kubetune_help() -> None:
    done = ENGINE.run(OPERATOR_IMAGE, ["--help"], entrypoint="kubetune", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "operator" in done.stdout and "run" in done.stdout


def test_operator_image_config_matches_the_chart() -> None:
    config = ENGINE.inspect(OPERATOR_IMAGE)["Config"]
    assert config["Entrypoint"] == OPERATOR_ENTRYPOINT, "the chart passes only flags as args"
    user = config["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "runAsNonRoot needs a numeric non-root USER"
    exposed = {int(p.split("/")[0]) for p in config.get("ExposedPorts") or {}}
    assert exposed == _chart_container_ports() == {8080, 8081, 8082}


def test_operator_runs_as_non_root() -> None:
    done = ENGINE.run(OPERATOR_IMAGE, ["-u"], entrypoint="id", timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) != 0


def test_operator_image_is_slim() -> None:
    size_mb = ENGINE.inspect(OPERATOR_IMAGE)["Size"] / 1e6
    assert size_mb < OPERATOR_MAX_MB, f"{OPERATOR_IMAGE} is {size_mb:.0f} MB"
    probe = (
        "import importlib.util as u, shutil, os, sys; "
        "print(sorted(m for m in ('pip', 'setuptools', 'torch', 'kubernetes.aio') "
        "if u.find_spec(m.split('.')[0]) and u.find_spec(m))); "
        "print(sorted(t for t in ('gcc', 'cc', 'make', 'g++') if shutil.which(t))); "
        "print(os.path.exists('/src'))"
    )
    done = ENGINE.run(OPERATOR_IMAGE, ["-c", probe], entrypoint="python", timeout=120)
    assert done.returncode == 0, done.stderr
    modules, tools, source_tree = done.stdout.splitlines()
    assert modules == "[]", f"build-only or unused packages in the image: {modules}"
    assert tools == "[]", f"build tools in the image: {tools}"
    assert source_tree == "False", "the source tree was left in the image"


# ---------------------------------------------------------------- operator image: samplers

_SAMPLER_PROBE = """
import json, typing, warnings
warnings.simplefilter("ignore")
import optuna
from kubetune.sampling import make_sampler
from kubetune.search_space import suggest_params
from kubetune.spec import parse_manifest

optuna.logging.set_verbosity(optuna.logging.ERROR)
# Small settings so that 4 trials get past each sampler's random start to its own model.
OPTIONS = {"TPE": {"nStartupTrials": 1}, "CmaEs": {"nStartupTrials": 1},
           "GP": {"nStartupTrials": 1}, "NSGAII": {"populationSize": 2}}
out = {}
for kind in json.loads(SAMPLERS):
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "TuningStudy", "metadata": {"name": "s"},
        "spec": {
            "objectives": [{"name": "v", "direction": "maximize"}],
            "searchSpace": [
                {"name": "x", "int": {"low": 0, "high": 3}},
                {"name": "y", "categorical": {"choices": ["a", "b"]}},
            ],
            "sampler": {"type": kind, "seed": 1, **OPTIONS.get(kind, {})},
            "trial": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
        },
    }
    spec = parse_manifest(manifest).spec
    try:
        sampler = make_sampler(spec)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for _ in range(4):
            trial = study.ask()
            params = suggest_params(trial, spec)
            study.tell(trial, params["x"] + (params["y"] == "b"))
        out[kind] = {"sampler": type(sampler).__name__, "trials": len(study.trials)}
    except Exception as exc:
        out[kind] = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sampler_results() -> dict[str, dict[str, Any]]:
    """Each CRD sampler built by ``make_sampler`` inside the image and run for 4 trials."""
    code = _SAMPLER_PROBE.replace("SAMPLERS", repr(json.dumps(_crd_samplers())))
    done = ENGINE.run(
        OPERATOR_IMAGE, ["-c", code], entrypoint="python", read_only=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize(
    "sampler", [s for s in _crd_samplers() if s not in UNAVAILABLE_IN_OPERATOR_IMAGE]
)
def test_operator_image_runs_sampler(sampler: str, sampler_results: dict[str, Any]) -> None:
    result = sampler_results[sampler]
    assert "error" not in result, f"{sampler}: {result}"
    assert result["trials"] == 4


@pytest.mark.parametrize("sampler", sorted(UNAVAILABLE_IN_OPERATOR_IMAGE))
def test_known_gap_sampler_unavailable_in_operator_image(
    sampler: str, sampler_results: dict[str, Any]
) -> None:
    """KNOWN GAP: see ``UNAVAILABLE_IN_OPERATOR_IMAGE``. When the image gains torch this test
    fails: move the sampler to the passing list then."""
    result = sampler_results[sampler]
    assert result.get("error") == UNAVAILABLE_IN_OPERATOR_IMAGE[sampler], result
    assert "kubetune[gp]" in result["message"] and "PyTorch" in result["message"]


# ---------------------------------------------------------------- operator image: running


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD_FILE)
    )
    name = f"images-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _study(name: str, trainer_image: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "TuningStudy",
            "metadata": {"name": name},
            "spec": {
                "objectives": [{"name": "val_accuracy", "direction": "maximize"}],
                "searchSpace": [{"name": "lr", "float": {"low": 1e-3, "high": 1e-1, "log": True}}],
                "budget": {"maxTrials": 1, "parallelism": 1},
                "trial": {
                    "result": {"from": "TerminationMessage"},
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "trainer",
                                    "image": TRAINER_IMAGE,
                                    "command": ["python", "-m", "kubetune_trainer"],
                                    "args": ["--epochs=2"],
                                }
                            ]
                        }
                    },
                },
            },
        }
    )


def _wait_for(what: str, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f} s; operator log:\n{log.read_text()[-4000:]}")


def test_operator_starts_read_only_against_the_control_plane(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    kubeconfig = self_contained_kubeconfig(control_plane, tmp_path / "kubeconfig")
    health, metrics, report = _free_port(), _free_port(), _free_port()
    container = f"kubetune-images-{secrets.token_hex(4)}"
    log = tmp_path / "operator.log"
    command = ENGINE.command(
        OPERATOR_IMAGE,
        [
            f"--namespace={namespace}",
            f"--health-port={health}",
            f"--metrics-port={metrics}",
            f"--report-port={report}",
        ],
        env={
            "KUBECONFIG": "/etc/kubetune/kubeconfig",
            "KUBETUNE_STORAGE_URL": "sqlite:////tmp/kubetune.db",
            "KUBETUNE_TOKEN_KEY": secrets.token_hex(16),
            "KUBETUNE_REPORT_URL": f"http://127.0.0.1:{report}",
        },
        volumes=[f"{kubeconfig}:/etc/kubetune/kubeconfig:ro"],
        read_only=True,
        host_network=True,
        name=container,
    )
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for("/healthz did not answer 200", lambda: answers(health, "/healthz"), 120, log)
        assert answers(metrics, "/metrics"), log.read_text()
        control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-", input=_study("s1", TRAINER_IMAGE)
        )
        jobs = _wait_for(
            "the operator created no trial Job",
            lambda: control_plane.kubectl(
                "get", "jobs", "-n", namespace, "-l", "kubetune.io/study=s1", "-o", "name"
            ).split(),
            90,
            log,
        )
        assert len(jobs) == 1, jobs
        assert process.poll() is None, log.read_text()
    finally:
        ENGINE.remove(container)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Read-only file system" not in log.read_text()


def test_operator_image_reaches_postgresql(postgres_url: str) -> None:
    """psycopg2's bundled libraries load and Optuna's schema migrations run in the image."""
    code = (
        "import sys, optuna; "
        "storage = optuna.storages.RDBStorage(sys.argv[1]); "
        "print(storage.get_current_version())"
    )
    done = ENGINE.run(
        OPERATOR_IMAGE,
        ["-c", code, postgres_url],
        entrypoint="python",
        read_only=True,
        host_network=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


# ---------------------------------------------------------------- trainer image


def test_trainer_image_config() -> None:
    config = ENGINE.inspect(TRAINER_IMAGE)["Config"]
    assert config["Entrypoint"] == TRAINER_ENTRYPOINT
    user = config["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0


def test_trainer_trains_two_epochs_and_writes_the_termination_message(tmp_path: Path) -> None:
    """TerminationMessage mode, as a kubelet runs a trial: params in the environment, the
    result written to the file mounted at ``/dev/termination-log``; read-only root."""
    message = tmp_path / "termination-log"
    message.touch()
    message.chmod(0o666)  # the kubelet's file is writable by the container's user
    done = ENGINE.run(
        TRAINER_IMAGE,
        ["--dataset=digits", "--epochs=2"],
        env={"KUBETUNE_PARAMS": json.dumps({"lr": 0.01, "batch_size": 64})},
        volumes=[f"{message}:/dev/termination-log:rw"],
        read_only=True,
        host_network=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "epoch 2/2" in done.stdout and "device=cpu" in done.stdout, done.stdout
    result = json.loads(message.read_text())
    (accuracy,) = result["values"]
    assert 0.5 < accuracy <= 1.0, result
