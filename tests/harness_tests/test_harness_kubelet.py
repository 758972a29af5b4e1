"""The kubelet stand-in on the real control plane: the real Job controller and scheduler
create and place the pods; the stand-in runs them and reports back."""

from __future__ import annotations

from typing import Any

from harness import Cluster

NS = "default"


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A Job whose container runs ``python -c script`` with LR=0.5 and POD in its env."""
    container: dict[str, Any] = {
        "name": "trial",
        "image": "trainer:test",
        "command": ["python", "-c"],
        "args": [script],
        "env": [
            {"name": "LR", "value": "0.5"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "ARG", "value": "lr=$(LR)"},
        ],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def job_condition(cluster: Cluster, name: str) -> str | None:
    found = cluster.api.find("jobs", name, NS)
    for cond in ((found or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_a_job_runs_as_a_process_with_env_and_termination_message(cluster: Cluster) -> None:
    script = (
        "import os; e = os.environ; open(e['KUBETUNE_TERMINATION_LOG'], 'w')"
        ".write(e['ARG'] + ' ' + e['POD'] + ' ' + str('DATABASE_URL' in e))"
    )
    cluster.api.create("jobs", job("ok", script), NS)
    assert cluster.api.wait_for(lambda: job_condition(cluster, "ok"), 60) == "Complete"
    pod = cluster.api.list("pods", NS, label_selector="job-name=ok")[0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"] == f"lr=0.5 {pod['metadata']['name']} False"
    assert pod["status"]["phase"] == "Succeeded"


def test_a_failing_container_fails_its_job_and_its_log_is_served(cluster: Cluster) -> None:
    script = "print('ValueError: boom'); raise SystemExit(3)"
    spec = {"container": {"terminationMessagePolicy": "FallbackToLogsOnError"}}
    cluster.api.create("jobs", job("bad", script, **spec), NS)
    assert cluster.api.wait_for(lambda: job_condition(cluster, "bad"), 60) == "Failed"
    pod = cluster.api.list("pods", NS, label_selector="job-name=bad")[0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert "ValueError: boom" in terminated["message"]
    log = cluster.plane.kubectl("logs", "-n", NS, pod["metadata"]["name"])
    assert "ValueError: boom" in log


def test_an_evicted_pod_is_stopped_and_the_job_controller_retries_it(cluster: Cluster) -> None:
    script = "import time, os; time.sleep(0 if os.path.exists('/tmp/never') else 300)"
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    cluster.api.create("jobs", job("ev", script, podFailurePolicy=policy), NS)
    first = cluster.api.wait_for(lambda: cluster.kubelet.active_pod("ev"), 60)
    cluster.kubelet.evict(first, NS)
    second = cluster.api.wait_for(
        lambda: (p := cluster.kubelet.active_pod("ev")) and p != first and p, 60
    )
    assert second != first
    assert cluster.api.find("jobs", "ev", NS)["status"].get("failed", 0) == 0


def test_a_pod_asking_for_more_gpus_than_the_node_has_stays_unschedulable(
    cluster: Cluster,
) -> None:
    gpu = {"container": {"resources": {"limits": {"nvidia.com/gpu": "9"}}}}
    cluster.api.create("jobs", job("big", "print(1)", **gpu), NS)

    def unschedulable() -> bool:
        pods = cluster.api.list("pods", NS, label_selector="job-name=big")
        conds = [c for p in pods for c in (p.get("status") or {}).get("conditions") or []]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conds
        )

    cluster.api.wait_for(unschedulable, 60)
    cluster.kubelet.set_gpus(16)
    assert cluster.api.wait_for(lambda: job_condition(cluster, "big"), 60) == "Complete"
