"""Which watch events wake a study's loop (``kubetune.wakeups``).

The property tests are the filter's safety argument: whenever two versions of a Job (or of its
Pod) would read differently to the decision (``observe_job``), their fingerprints differ, so
the event between them wakes a pass. Fields the decision does not read vary freely.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.jobs import LABEL_ATTEMPT, LABEL_TRIAL
from kubetune.observed_job import observe_job
from kubetune.wakeups import WakeFilter, job_fingerprint, pod_fingerprint

TIMES = st.sampled_from([None, "2026-11-30T08:00:00Z", "2026-11-30T08:00:05Z"])
LABELS = {LABEL_TRIAL: "3", LABEL_ATTEMPT: "0", "job-name": "s-3"}


def conditions(*types: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Few distinct conditions, so that two draws often differ in one field only."""
    pool = [
        {"type": t, "status": status, "reason": reason, "message": message}
        for t in types
        for status in ("True", "False")
        for reason, message in (
            ("PodFailurePolicy", "matching FailJob rule at index 0"),
            ("PodFailurePolicy", "matching FailJob rule at index 1"),
            ("DeadlineExceeded", ""),
        )
    ]
    timed = st.builds(
        lambda c, when: {**c, "lastTransitionTime": when}, st.sampled_from(pool), TIMES
    )
    return st.lists(timed, max_size=2)


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "s-3", "labels": LABELS}
    if draw(st.booleans()):
        meta["deletionTimestamp"] = "2026-11-30T08:01:00Z"
    return {
        "metadata": meta,
        "spec": {"suspend": draw(st.sampled_from([None, True, False]))},
        "status": {
            "conditions": draw(conditions("Complete", "Failed", "SuccessCriteriaMet", "Suspended")),
            "startTime": draw(TIMES),
            "completionTime": draw(TIMES),
            # Read by nobody in the decision: must not matter.
            "active": draw(st.integers(0, 1)),
            "ready": draw(st.integers(0, 1)),
            "uncountedTerminatedPods": draw(st.sampled_from([{}, {"succeeded": ["u1"]}])),
        },
    }


@st.composite
def container_statuses(draw: st.DrawFn) -> dict[str, Any]:
    state = draw(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "waiting": st.fixed_dictionaries(
                        {
                            "reason": st.sampled_from(["ContainerCreating", "ErrImagePull"]),
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
                            "message": st.sampled_from([None, '{"values": [1]}']),
                        }
                    )
                }
            ),
        )
    )
    return {
        "name": draw(st.sampled_from(["trainer", "sidecar"])),
        "state": state,
        "ready": draw(st.booleans()),  # not read by the decision
        "restartCount": draw(st.integers(0, 2)),  # not read either
    }


@st.composite
def pod_parts(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "deleting": draw(st.booleans()),
        "phase": draw(st.sampled_from(["Pending", "Running", "Succeeded"])),  # not read
        "conditions": draw(conditions("PodScheduled", "DisruptionTarget", "Ready")),
        "containerStatuses": draw(st.lists(container_statuses(), max_size=1)),
    }


def pod_of(parts: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "s-3-abcde", "labels": LABELS}
    if parts["deleting"]:
        meta["deletionTimestamp"] = "2026-11-30T08:01:00Z"
    status = {k: parts[k] for k in ("phase", "conditions", "containerStatuses")}
    return {"metadata": meta, "status": status}


@st.composite
def pod_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pod and the same pod with one part (or one container field) drawn again."""
    a, other = draw(pod_parts()), draw(pod_parts())
    key = draw(st.sampled_from(sorted(a)))
    b = {**a, key: other[key]}
    if a["containerStatuses"] and other["containerStatuses"] and draw(st.booleans()):
        field = draw(st.sampled_from(["name", "state", "ready", "restartCount"]))
        mixed = {**a["containerStatuses"][0], field: other["containerStatuses"][0][field]}
        b = {**a, "containerStatuses": [mixed]}
    return pod_of(a), pod_of(b)


@settings(max_examples=400)
@given(jobs(), jobs())
def test_a_job_change_the_decision_reads_always_wakes(a: dict[str, Any], b: dict[str, Any]) -> None:
    if observe_job(a) != observe_job(b):
        assert job_fingerprint(a) != job_fingerprint(b)


ACTIVE_JOB: dict[str, Any] = {"metadata": {"name": "s-3", "labels": LABELS}, "status": {}}
COMPLETE_JOB: dict[str, Any] = {
    "metadata": {"name": "s-3", "labels": LABELS},
    "status": {"conditions": [{"type": "Complete", "status": "True"}]},
}


@settings(max_examples=400)
@given(st.sampled_from([ACTIVE_JOB, COMPLETE_JOB]), pod_pairs())
def test_a_pod_change_the_decision_reads_always_wakes(
    job: dict[str, Any], pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    a, b = pair
    if observe_job(job, [a]) != observe_job(job, [b]):
        assert pod_fingerprint(a) != pod_fingerprint(b)


def test_events_that_change_nothing_read_do_not_wake() -> None:
    wake = WakeFilter()
    job: dict[str, Any] = {"metadata": {"name": "s-3"}, "status": {"active": 1}}
    assert wake.changed("job", "s-3", "ADDED", job)  # first sight
    assert not wake.changed("job", "s-3", "MODIFIED", {**job, "status": {"ready": 1}})
    done = {"type": "Complete", "status": "True"}
    assert wake.changed("job", "s-3", "MODIFIED", {**job, "status": {"conditions": [done]}})
    assert not wake.changed("job", "s-3", "MODIFIED", {**job, "status": {"conditions": [done]}})
    assert wake.changed("job", "s-3", "DELETED", job)
    assert wake.changed("job", "s-3", "ADDED", job)  # a re-created Job is new again
    pod = {"status": {"phase": "Pending"}}
    assert wake.changed("pod", "s-3-x", None, pod)
    assert not wake.changed("pod", "s-3-x", "MODIFIED", {"status": {"phase": "Running"}})
    assert len(wake) == 2


def _pod(container: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "s-3-abcde", "labels": LABELS},
        "status": {"containerStatuses": [{"name": "trainer", **container}], **status},
    }


RUNNING = {"state": {"running": {"startedAt": "2026-11-30T08:00:00Z"}}}
POD_CHANGES = [
    # (before, after, the decision reads the change)
    (RUNNING, {"state": {"running": {"startedAt": "2026-11-30T08:00:09Z"}}}, True),
    (
        {"state": {"waiting": {"reason": "ContainerCreating"}}},
        {"state": {"waiting": {"reason": "ErrImagePull"}}},
        True,
    ),
    (RUNNING, {"state": {"terminated": {"exitCode": 3}}}, True),
    (
        {"state": {"terminated": {"exitCode": 3}}},
        {"state": {"terminated": {"exitCode": 137}}},
        True,
    ),
    (
        {"state": {"terminated": {"exitCode": 0}}},
        {"state": {"terminated": {"exitCode": 0, "message": "{}"}}},
        True,
    ),
    (RUNNING, {**RUNNING, "ready": True}, False),
    (RUNNING, {**RUNNING, "restartCount": 1}, False),
]


@pytest.mark.parametrize(("before", "after", "read"), POD_CHANGES)
def test_each_pod_field_the_decision_reads_wakes_and_no_other(
    before: dict[str, Any], after: dict[str, Any], read: bool
) -> None:
    a, b = _pod(before), _pod(after)
    assert (observe_job(ACTIVE_JOB, [a]) != observe_job(ACTIVE_JOB, [b])) is read
    assert (pod_fingerprint(a) != pod_fingerprint(b)) is read
    wake = WakeFilter()
    wake.changed("pod", "p", "ADDED", a)
    assert wake.changed("pod", "p", "MODIFIED", b) is read


def test_pod_conditions_and_deletion_wake() -> None:
    base = _pod(RUNNING)
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    disrupted = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    for changed in (
        _pod(RUNNING, conditions=[unschedulable]),
        _pod(RUNNING, conditions=[disrupted]),
        {**base, "metadata": {**base["metadata"], "deletionTimestamp": "2026-11-30T08:01:00Z"}},
    ):
        assert pod_fingerprint(changed) != pod_fingerprint(base)
    ready = {"type": "Ready", "status": "True"}
    assert pod_fingerprint(_pod(RUNNING, conditions=[ready], phase="Running")) == (
        pod_fingerprint(base)
    )
