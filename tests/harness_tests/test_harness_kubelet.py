"""The fake kubelet and Job controller: pods, processes, Job conditions, faults."""

from __future__ import annotations

from typing import Any, cast

import kubernetes

from harness import Cluster

NS = "default"


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A Job whose container runs ``python -c script`` with LR=0.5 in its env."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"kubetune.io/study": "s"}},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": {"kubetune.io/trial": "0"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trial",
                            "image": "trainer:test",
                            "command": ["python", "-c"],
                            "args": [script],
                            "env": [
                                {"name": "LR", "value": "0.5"},
                                {
                                    "name": "POD",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                        }
                    ],
                },
            },
        },
    }


def condition(cluster: Cluster, name: str) -> dict[str, Any] | None:
    found = cluster.api.find("jobs", name, NS)
    for cond in ((found or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return dict(cond)
    return None


def finished(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(
        cluster.api.wait_for(lambda: condition(cluster, name), message=f"job {name} never finished")
    )


WRITE_RESULT = (
    "import os; print('training', os.environ['POD']); "
    "open(os.environ['KUBETUNE_TERMINATION_LOG'], 'w').write('{\"values\": [$(LR)]}')"
)
SLEEP = "import time; time.sleep(60)"


def test_job_runs_to_completion_with_termination_message(cluster: Cluster) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.client())
    batch.create_namespaced_job(NS, cast(Any, job("ok", WRITE_RESULT)))
    assert finished(cluster, "ok")["type"] == "Complete"
    status = cluster.api.get("jobs", "ok", NS)["status"]
    assert status["succeeded"] == 1 and "active" not in status and status["completionTime"]
    [pod] = cluster.api.list("pods", NS, "job-name=ok")
    assert pod["metadata"]["labels"]["kubetune.io/trial"] == "0"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["message"] == '{"values": [0.5]}'  # $(LR) expanded from the container env
    log = kubernetes.client.CoreV1Api(cluster.client()).read_namespaced_pod_log(
        pod["metadata"]["name"], NS
    )
    assert log.strip() == f"training {pod['metadata']['name']}"


def test_exit_code_fails_the_job_by_backoff_limit_or_policy(cluster: Cluster) -> None:
    cluster.api.create("jobs", job("plain", "raise SystemExit(3)"), NS)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}
    cluster.api.create("jobs", job("ruled", "raise SystemExit(3)", podFailurePolicy=policy), NS)
    assert finished(cluster, "plain")["reason"] == "BackoffLimitExceeded"
    ruled = finished(cluster, "ruled")
    assert ruled["reason"] == "PodFailurePolicy" and "exit code 3" in ruled["message"]
    [pod] = cluster.api.list("pods", NS, "job-name=plain")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_eviction_follows_the_pod_failure_policy(cluster: Cluster) -> None:
    ignore = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    fail = {"rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    # Ignore: the evicted pod is replaced, the failure is not counted.
    cluster.api.create("jobs", job("ign", SLEEP, podFailurePolicy=ignore), NS)
    first = cluster.api.wait_for(lambda: cluster.kubelet.active_pod("ign"))
    cluster.kubelet.evict(first)
    cluster.api.wait_for(
        lambda: cluster.api.find("pods", first, NS) is None
    )  # evicted pods go away
    second = cluster.api.wait_for(lambda: cluster.kubelet.active_pod("ign"))
    assert second != first
    assert "failed" not in cluster.api.get("jobs", "ign", NS)["status"]
    # FailJob: the Job fails with reason PodFailurePolicy.
    cluster.api.create("jobs", job("failjob", SLEEP, podFailurePolicy=fail), NS)
    cluster.kubelet.evict(cluster.api.wait_for(lambda: cluster.kubelet.active_pod("failjob")))
    failed = finished(cluster, "failjob")
    assert failed["reason"] == "PodFailurePolicy" and "DisruptionTarget" in failed["message"]


def test_deadline_kills_the_process(cluster: Cluster) -> None:
    cluster.api.create("jobs", job("slow", SLEEP, activeDeadlineSeconds=1), NS)
    assert finished(cluster, "slow")["reason"] == "DeadlineExceeded"
    assert cluster.api.list("pods", NS, "job-name=slow") == []
    assert cluster.kubelet.running_processes() == 0


def test_oom_and_node_loss(cluster: Cluster) -> None:
    cluster.api.create("jobs", job("oom", SLEEP), NS)
    cluster.kubelet.oom(cluster.api.wait_for(lambda: cluster.kubelet.active_pod("oom")))
    assert finished(cluster, "oom")["reason"] == "BackoffLimitExceeded"
    [pod] = cluster.api.list("pods", NS, "job-name=oom")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


def test_image_pull_and_scheduling_faults_keep_pods_pending(cluster: Cluster) -> None:
    cluster.kubelet.image_pull_error("pull-*")
    cluster.kubelet.unschedulable("sched-*")
    cluster.api.create("jobs", job("pull-1", WRITE_RESULT), NS)
    cluster.api.create("jobs", job("sched-1", WRITE_RESULT), NS)
    [pulling] = cluster.api.wait_for(lambda: cluster.api.list("pods", NS, "job-name=pull-1"))
    waiting = cluster.api.wait_for(
        lambda: (cluster.api.get("pods", pulling["metadata"]["name"], NS).get("status") or {}).get(
            "containerStatuses"
        )
    )
    assert waiting[0]["state"]["waiting"]["reason"] == "ErrImagePull"
    [pending] = cluster.api.wait_for(
        lambda: [p for p in cluster.api.list("pods", NS, "job-name=sched-1") if p.get("status")]
    )
    scheduled = pending["status"]["conditions"][0]
    assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert condition(cluster, "pull-1") is None and condition(cluster, "sched-1") is None
    cluster.kubelet.heal()
    assert finished(cluster, "pull-1")["type"] == "Complete"
    assert finished(cluster, "sched-1")["type"] == "Complete"


def test_deleting_a_job_in_background_kills_its_process(cluster: Cluster) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.client())
    batch.create_namespaced_job(NS, cast(Any, job("doomed", SLEEP)))
    cluster.api.wait_for(lambda: cluster.kubelet.active_pod("doomed"))
    assert cluster.kubelet.running_processes() == 1
    batch.delete_namespaced_job("doomed", NS, propagation_policy="Background")
    assert cluster.api.list("pods", NS, "job-name=doomed") == []
    cluster.api.wait_for(lambda: cluster.kubelet.running_processes() == 0)


def test_deleting_a_job_without_policy_orphans_its_pods_like_a_real_cluster(
    cluster: Cluster,
) -> None:
    cluster.api.create("jobs", job("orphaner", SLEEP), NS)
    pod = cluster.api.wait_for(lambda: cluster.kubelet.active_pod("orphaner"))
    cluster.api.delete("jobs", "orphaner", NS)  # batch/v1 default: orphan dependents
    assert "ownerReferences" not in cluster.api.get("pods", pod, NS)["metadata"]
    cluster.api.delete("pods", pod, NS)
    cluster.api.wait_for(lambda: cluster.kubelet.running_processes() == 0)


def test_instant_mode_runs_no_process(cluster: Cluster) -> None:
    cluster.kubelet.instant = lambda pod: f'{{"values": [{len(pod["metadata"]["name"])}]}}'
    cluster.api.create("jobs", job("quick", SLEEP), NS)
    assert finished(cluster, "quick")["type"] == "Complete"
    [pod] = cluster.api.list("pods", NS, "job-name=quick")
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message == f'{{"values": [{len(pod["metadata"]["name"])}]}}'
    assert cluster.kubelet.errors == []


def test_suspended_job_waits_and_pod_phases_are_recorded(cluster: Cluster) -> None:
    phases: list[str] = []
    cluster.api.add_listener(
        lambda key, kind, obj, old: (
            phases.append((obj.get("status") or {}).get("phase", "-"))
            if key == "pods" and kind == "MODIFIED"
            else None
        )
    )
    cluster.api.create("jobs", job("held", WRITE_RESULT, suspend=True), NS)
    cluster.kubelet.call(lambda: None)  # let the kubelet see the Job
    assert cluster.api.list("pods", NS, "job-name=held") == []
    cluster.api.patch("jobs", "held", {"spec": {"suspend": False}}, NS)
    assert finished(cluster, "held")["type"] == "Complete"
    assert phases == ["Pending", "Running", "Succeeded"]
