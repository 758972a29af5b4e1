"""What kopf's indexes keep of a trial Job and Pod (``slim_job``, ``slim_pod``).

The property tests are the slimming's safety argument: for whole Job and Pod bodies as the
apiserver sends them (every field the decision does not read filled in too), the decision reads
the same from the slim copies as from the bodies.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.jobs import LABEL_ATTEMPT, LABEL_STUDY, LABEL_TRIAL
from kubetune.observed_job import observe_job, slim_job, slim_pod

TIMES = st.sampled_from([None, "2026-11-30T08:00:00Z", "2026-11-30T08:00:05Z"])
UID = "3e299ed4-7e02-4149-8da1-8c796e8b04f3"
JOB_UID = "ad259588-e2b1-45a6-9df3-626e33557d6f"


def _labels(name: str, trial: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "kubetune",
        "batch.kubernetes.io/controller-uid": JOB_UID,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": JOB_UID,
        "job-name": name,
        LABEL_ATTEMPT: "0",
        LABEL_STUDY: "demo",
        LABEL_TRIAL: trial,
        "kueue.x-k8s.io/queue-name": "bench-queue",
    }


def _condition(ctype: str, status: str, reason: str, message: str, when: str | None) -> Any:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": when,
        "lastTransitionTime": when,
    }


def conditions(*types: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    reasons = st.sampled_from(
        [
            (
                "PodFailurePolicy",
                "Pod default/demo-3-x has condition DisruptionTarget matching "
                "FailJob rule at index 0",
            ),
            (
                "PodFailurePolicy",
                "Container trial for pod default/demo-3-x failed with exit "
                "code 3 matching FailJob rule at index 1",
            ),
            ("DeadlineExceeded", "Job was active longer than specified deadline"),
            ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            ("Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
            ("CompletionsReached", "Reached expected number of succeeded pods"),
        ]
    )
    one = st.builds(
        lambda t, s, rm, when: _condition(t, s, rm[0], rm[1], when),
        st.sampled_from(types),
        st.sampled_from(["True", "False"]),
        reasons,
        TIMES,
    )
    return st.lists(one, max_size=4)


def _rules(container: str | None) -> list[dict[str, Any]]:
    disruption = {
        "action": "FailJob",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    user = {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    if container is not None:
        user["onExitCodes"]["containerName"] = container
    return [disruption, user]


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A Job as the apiserver sends it, with its pod template and every status field."""
    trial = draw(st.sampled_from(["3", "4", "x"]))
    name = f"demo-{trial}"
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": JOB_UID,
        "resourceVersion": "6799",
        "generation": 2,
        "creationTimestamp": "2026-11-30T08:00:00Z",
        "annotations": {"kubetune.io/optuna-study": f"default.demo.{UID}"},
        "labels": _labels(name, trial),
        "ownerReferences": [
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "TuningStudy",
                "name": "demo",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if draw(st.booleans()):
        meta["deletionTimestamp"] = "2026-11-30T08:01:00Z"
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {"rules": _rules(draw(st.sampled_from([None, "trial", "sidecar"])))},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trial",
                        "image": "zero-work:1",
                        "env": [{"name": "KUBETUNE_PARAMS", "value": "{}"}],
                    }
                ]
            }
        },
        "ttlSecondsAfterFinished": 3600,
    }
    suspend = draw(st.sampled_from([None, True, False]))
    if suspend is not None:
        spec["suspend"] = suspend
    status = {
        "conditions": draw(
            conditions("Complete", "Failed", "SuccessCriteriaMet", "Suspended", "FailureTarget")
        ),
        "startTime": draw(TIMES),
        "completionTime": draw(TIMES),
        "active": draw(st.integers(0, 1)),
        "ready": 0,
        "succeeded": draw(st.integers(0, 1)),
        "terminating": 0,
        "uncountedTerminatedPods": {},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": spec,
        "status": status,
    }


STATES = st.one_of(
    st.fixed_dictionaries(
        {
            "waiting": st.fixed_dictionaries(
                {
                    "reason": st.sampled_from(
                        ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"]
                    ),
                    "message": st.sampled_from(["", "not found"]),
                }
            )
        }
    ),
    st.fixed_dictionaries({"running": st.fixed_dictionaries({"startedAt": TIMES})}),
    st.fixed_dictionaries(
        {
            "terminated": st.fixed_dictionaries(
                {
                    "exitCode": st.sampled_from([0, 3, 137]),
                    "reason": st.sampled_from(["Completed", "Error"]),
                    "message": st.sampled_from(["", '{"values": [1.5]}']),
                    "startedAt": TIMES,
                    "finishedAt": TIMES,
                    "containerID": st.just("fake://1"),
                }
            )
        }
    ),
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    """A trial Pod as the apiserver sends it: every condition, every container field."""
    trial = draw(st.sampled_from(["3", "4"]))
    name = draw(st.sampled_from([f"demo-{trial}", "demo-9"]))
    labels = _labels(name, trial)
    if draw(st.booleans()):
        del labels["job-name"]
    statuses = [
        {
            "name": draw(st.sampled_from(["trial", "sidecar"])),
            "state": draw(STATES),
            "lastState": {},
            "ready": draw(st.booleans()),
            "restartCount": 0,
            "started": True,
            "image": "zero-work:1",
            "imageID": "sha256:1",
            "containerID": "fake://1",
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-abcde",
            "namespace": "default",
            "uid": "p-1",
            "creationTimestamp": draw(TIMES),
            "labels": labels,
            "ownerReferences": [{"kind": "Job", "name": name, "uid": JOB_UID}],
            "finalizers": ["batch.kubernetes.io/job-tracking"],
        },
        "spec": {"containers": [{"name": "trial", "image": "zero-work:1"}], "nodeName": "n1"},
        "status": {
            "phase": draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"])),
            "conditions": draw(
                conditions(
                    "PodScheduled", "DisruptionTarget", "Ready", "Initialized", "ContainersReady"
                )
            ),
            "containerStatuses": statuses,
            "hostIP": "10.0.0.1",
            "podIPs": [{"ip": "10.1.0.7"}],
            "qosClass": "BestEffort",
            "startTime": draw(TIMES),
        },
    }


@settings(max_examples=400)
@given(jobs(), st.lists(pods(), max_size=3))
def test_the_decision_reads_the_same_from_the_slim_copies(
    job: dict[str, Any], children: list[dict[str, Any]]
) -> None:
    whole = observe_job(job, children)
    assert observe_job(slim_job(job), [slim_pod(p) for p in children]) == whole


@given(jobs(), pods())
def test_slim_copies_keep_names_and_owners_and_less_than_half_the_body(
    job: dict[str, Any], pod: dict[str, Any]
) -> None:
    before = copy.deepcopy((job, pod))
    sj, sp = slim_job(job), slim_pod(pod)
    assert (job, pod) == before
    assert sj["metadata"]["name"] == job["metadata"]["name"]
    assert [o["uid"] for o in sj["metadata"]["ownerReferences"]] == [UID]
    assert sp["metadata"]["name"] == pod["metadata"]["name"]
    assert set(sj["metadata"]["labels"]) <= {LABEL_STUDY, LABEL_TRIAL, LABEL_ATTEMPT, "job-name"}
    # Nothing else: ~15 KiB and ~20 KiB of Python objects per whole Job and Pod held in the
    # indexes were most of the operator's growth at 5,000 Jobs (benchmarks/README.md, scale).
    assert set(sj) == {"metadata", "spec", "status"} and set(sp) == {"metadata", "status"}
    assert set(sj["spec"]) <= {"suspend", "podFailurePolicy"}
    assert set(sj["status"]) <= {"startTime", "completionTime", "conditions"}
    assert {c["type"] for c in sj["status"]["conditions"]} <= {"Complete", "Failed"}
    assert {c["type"] for c in sp["status"]["conditions"]} <= {"PodScheduled", "DisruptionTarget"}
    for c in sj["status"]["conditions"] + sp["status"]["conditions"]:
        assert set(c) <= {"type", "status", "reason", "message", "lastTransitionTime"}
    assert all(set(cs) == {"name", "state"} for cs in sp["status"]["containerStatuses"])
