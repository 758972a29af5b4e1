"""What a pass observes: the study's Jobs from kopf's index, each with its own pods."""

from __future__ import annotations

from typing import Any

import kopf

from kubetune.jobs import LABEL_ATTEMPT, LABEL_STUDY, LABEL_TRIAL
from kubetune.observe import LIST_CHUNK_SIZE, configure_watching, observe_children
from kubetune.observed_job import observe_job
from kubetune.runtime import StudyState
from kubetune.spec import GROUP, PLURAL, VERSION

KEY = ("ns", "demo")
UID = "study-uid"


def _job(trial: int, attempt: int = 0, *, owner: str = UID, **status: Any) -> dict[str, Any]:
    suffix = f"-r{attempt}" if attempt else ""
    labels = {LABEL_STUDY: "demo", LABEL_TRIAL: str(trial), LABEL_ATTEMPT: str(attempt)}
    return {
        "metadata": {
            "name": f"demo-{trial}{suffix}",
            "labels": labels,
            "ownerReferences": [{"uid": owner}],
        },
        "spec": {},
        "status": status,
    }


def _pod(name: str, labels: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
    status = {"containerStatuses": [{"name": "trial", "state": state}]}
    return {"metadata": {"name": name, "labels": {LABEL_STUDY: "demo", **labels}}, "status": status}


def _ended(code: int, message: str = "") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "message": message}}


def test_each_job_sees_exactly_the_pods_a_full_match_finds() -> None:
    """Pods found by ``job-name``, by trial and attempt labels only (no ``job-name`` yet), pods
    of other attempts and other Jobs, and two pods of one Job (the later one counts)."""
    jobs = [_job(n, active=1) for n in range(6)] + [_job(2, 1, active=1)]
    jobs.append(_job(9, owner="an-earlier-study"))
    pods = [
        _pod("p0", {"job-name": "demo-0"}, _ended(0, '{"values": [1]}')),
        _pod("p1", {LABEL_TRIAL: "1", LABEL_ATTEMPT: "0"}, _ended(3)),
        _pod("p2", {"job-name": "demo-2", LABEL_TRIAL: "2", LABEL_ATTEMPT: "0"}, _ended(1)),
        _pod("p2r", {"job-name": "demo-2-r1", LABEL_TRIAL: "2", LABEL_ATTEMPT: "1"}, _ended(0)),
        _pod("p3a", {"job-name": "demo-3"}, _ended(2)),
        _pod("p3b", {"job-name": "demo-3"}, {"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
        _pod("p4", {LABEL_TRIAL: "04", LABEL_ATTEMPT: "0"}, _ended(5)),
        _pod("stray", {"job-name": "other-7", LABEL_TRIAL: "x"}, _ended(9)),
    ]
    seen = observe_children(
        StudyState(), key=KEY, uid=UID, jobs_index={KEY: jobs}, pods_index={KEY: pods}
    )
    assert seen.jobs == [observe_job(j, pods) for j in jobs[:-1]]
    by_name = {j.name: j for j in seen.jobs}
    assert by_name["demo-0"].termination_message == '{"values": [1]}'
    assert (by_name["demo-1"].exit_code, by_name["demo-4"].exit_code) == (3, 5)
    assert (by_name["demo-2"].exit_code, by_name["demo-2-r1"].exit_code) == (1, 0)
    assert by_name["demo-3"].exit_code == 2 and by_name["demo-3"].running_since is not None
    assert by_name["demo-5"].exit_code is None
    assert set(seen.pods_by_job) == {"demo-0", "demo-2", "demo-2-r1", "demo-3", "other-7"}


def test_a_thousand_finished_jobs_are_each_matched_to_their_own_pod() -> None:
    """The index of a large study (finished Jobs kept until their TTL): every Job is read
    with its own pod's result, none with another's."""
    jobs = [_job(n, succeeded=1) for n in range(1000)]
    pods = [
        _pod(f"p{n}", {"job-name": f"demo-{n}"}, _ended(0, f'{{"values": [{n}]}}'))
        for n in range(1000)
    ]
    seen = observe_children(
        StudyState(), key=KEY, uid=UID, jobs_index={KEY: jobs}, pods_index={KEY: pods}
    )
    assert [j.termination_message for j in seen.jobs] == [
        f'{{"values": [{n}]}}' for n in range(1000)
    ]


def test_kopf_pages_its_lists_and_asks_only_for_trial_jobs_and_pods() -> None:
    settings = kopf.OperatorSettings()
    configure_watching(settings)
    assert settings.watching.chunk_size == LIST_CHUNK_SIZE
    selectors = settings.watching.label_selectors
    for group, plural in (("batch", "jobs"), ("", "pods")):
        assert selectors.collect(kopf.Resource(group, "v1", plural)) == [LABEL_STUDY]
    # Every study is watched; another group's Jobs are none of ours to filter.
    assert selectors.collect(kopf.Resource(GROUP, VERSION, PLURAL)) == []
    assert selectors.collect(kopf.Resource("batch.volcano.sh", "v1alpha1", "jobs")) == []


def test_a_pass_observes_again_only_the_entries_kopf_replaced() -> None:
    """kopf replaces an index entry when its object changes: a Job whose entry and pods are
    the same objects as last pass is not observed again, any other is, and every pass sees
    what a first observation of the same indexes sees."""
    state = StudyState()
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    jobs = [_job(n, active=1) for n in range(4)]
    pods = [_pod(f"p{n}", {"job-name": f"demo-{n}"}, running) for n in range(3)]

    def observe() -> list[Any]:
        seen = observe_children(
            state, key=KEY, uid=UID, jobs_index={KEY: jobs}, pods_index={KEY: pods}
        )
        fresh = observe_children(
            StudyState(), key=KEY, uid=UID, jobs_index={KEY: jobs}, pods_index={KEY: pods}
        )
        assert seen == fresh
        return seen.jobs

    first = observe()
    assert observe()[0] is first[0]  # nothing replaced: the same values
    jobs[1] = _job(1, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    pods[2] = _pod("p2", {"job-name": "demo-2"}, _ended(0, '{"values": [2]}'))  # its pod's
    pods.append(_pod("p3", {"job-name": "demo-3"}, running))  # a pod appears for demo-3
    del jobs[0]  # the Job is gone from the index
    second = observe()
    assert [j.name for j in second] == ["demo-1", "demo-2", "demo-3"]
    assert second[0].phase == "Succeeded" and second[0] != first[1]
    assert second[1].termination_message == '{"values": [2]}'
    assert second[2].running_since is not None and first[3].running_since is None
    assert set(state.observed) == {"demo-1", "demo-2", "demo-3"}
    third = observe()
    assert all(a is b for a, b in zip(third, second, strict=True))
    del pods[2]  # demo-2's pod is gone
    fourth = observe()
    assert fourth[1].termination_message is None and fourth[0] is third[0]
    # A pod matched by its trial label only (no job-name label) is one of demo-3's.
    pods.append(_pod("p3b", {LABEL_TRIAL: "3", LABEL_ATTEMPT: "0"}, _ended(7)))
    fifth = observe()
    assert fifth[2] is not fourth[2] and fifth[:2] == fourth[:2]
    assert fifth[0] is fourth[0] and fifth[1] is fourth[1]
    assert observe_children(
        state, key=KEY, uid=UID, jobs_index={KEY: jobs}, pods_index={KEY: pods}
    ).pods_by_job == {"demo-0": pods[0], "demo-1": pods[1], "demo-3": pods[2]}
