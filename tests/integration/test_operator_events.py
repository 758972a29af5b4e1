"""Events for every trial outcome, in both result modes, with a bounded volume, on the real
control plane (real kube-apiserver, controller-manager, kopf; trial pods are processes run by
the kubelet stand-in; the ledger is a real PostgreSQL).

Each scenario asserts on the Event objects the API server holds for the study.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from operator_fixtures import (
    events,
    run_operator_thread,
    study_manifest,
    trainer_file,
    wait_state,
)

from harness import Cluster
from kubetune.event_posting import EventPoster, study_reference
from kubetune.reconcile import (
    COMBINED_PREFIX,
    DEFAULT_EVENTS_PER_REASON,
    EventBudget,
    EventSpec,
    aggregate_event_name,
    outcome_event,
)

NS = "default"
OUTCOMES = ("TrialCompleted", "TrialPruned", "TrialFailed")

#: Trial 0 completes, trial 1 is pruned (Reporter mode only: a termination message cannot say
#: "pruned"), trial 2 fails: through the report API, or by its exit code / a broken message.
TRAINER = r"""
import json, os, sys
n = int(os.environ["KUBETUNE_TRIAL_NUMBER"])
if "KUBETUNE_REPORT_URL" in os.environ:
    from kubetune import trial
    if n == 0:
        trial.report(0.5, 0)
        trial.complete(0.75)
    elif n == 1:
        trial.report(0.25, 0)
        trial.report(0.125, 1)
        trial.pruned()
    else:
        trial.fail("loss became NaN at step 7\nTraceback (most recent call last): ...")
    sys.exit(0)
path = os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log")
if n == 0:
    with open(path, "w") as f:
        json.dump({"values": [0.75]}, f)
elif n == 1:
    print("ValueError: boom in trial 1")
    sys.exit(3)
else:
    with open(path, "w") as f:
        f.write("not json")
"""

EXPECTED = {
    "Reporter": {
        ("Normal", "TrialCompleted", "Trial 0 completed with values [0.75]"),
        ("Normal", "TrialPruned", "Trial 1 was pruned at step 1"),
        (
            "Warning",
            "TrialFailed",
            "Trial 2 failed (reported by the trainer): loss became NaN at step 7",
        ),
    },
    "TerminationMessage": {
        ("Normal", "TrialCompleted", "Trial 0 completed with values [0.75]"),
        (
            "Warning",
            "TrialFailed",
            "Trial 1 failed (ExitCode): Job outcomes-1 failed: container exited with code 3",
        ),
        (
            "Warning",
            "TrialFailed",
            "Trial 2 failed (NoResult): Job outcomes-2: the termination message is not JSON",
        ),
    },
}


def _outcome_events(cluster: Cluster, name: str) -> set[tuple[str, str, str]]:
    return {
        (e["type"], e["reason"], e["message"])
        for e in events(cluster, name)
        if e["reason"] in OUTCOMES
    }


@pytest.mark.parametrize("mode", ["Reporter", "TerminationMessage"])
def test_every_trial_outcome_posts_an_event_with_its_number_and_values_or_reason(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path, mode: str
) -> None:
    trainer = tmp_path / "outcomes_trainer.py"
    trainer.write_text(TRAINER)
    manifest = study_manifest(
        "outcomes", trainer, max_trials=3, parallelism=3, result=mode, max_retries=0
    )
    expected = EXPECTED[mode]
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "outcomes", "Succeeded")
        cluster.api.wait_for(
            lambda: _outcome_events(cluster, "outcomes") >= expected,
            message=f"outcome Events missing: {expected - _outcome_events(cluster, 'outcomes')}",
        )
    assert runner.exit_code == 0, runner.output[-3000:]

    counts = final["trials"]
    assert (counts["completed"], counts["pruned"], counts["failed"]) == (
        (1, 1, 1) if mode == "Reporter" else (1, 0, 2)
    )
    outcome = [e for e in events(cluster, "outcomes") if e["reason"] in OUTCOMES]
    # Each outcome once: the trial told by the report API is not told again by the reconcile.
    assert _outcome_events(cluster, "outcomes") == expected
    assert len(outcome) == 3
    assert all(e.get("count", 1) == 1 for e in outcome)
    assert all(e["involvedObject"]["kind"] == "TuningStudy" for e in outcome)
    uid = cluster.api.get("tuningstudies", "outcomes", NS)["metadata"]["uid"]
    assert all(e["involvedObject"].get("uid") == uid for e in outcome)


# --- volume -------------------------------------------------------------------------------


def _counted(cluster: Cluster, name: str, reason: str) -> int:
    return sum(int(e.get("count") or 1) for e in events(cluster, name) if e["reason"] == reason)


def test_the_operator_folds_per_trial_events_beyond_the_first_ten_per_reason(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    trials = DEFAULT_EVENTS_PER_REASON + 4
    manifest = study_manifest("busy", trainer_file(tmp_path), max_trials=trials, parallelism=4)
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "busy", "Succeeded")
        cluster.api.wait_for(
            lambda: (
                _counted(cluster, "busy", "TrialCompleted") == trials
                and _counted(cluster, "busy", "TrialLaunched") == trials
            ),
            message="the Events do not count every trial",
        )
    assert runner.exit_code == 0, runner.output[-3000:]

    assert final["trials"]["completed"] == trials
    stored = events(cluster, "busy")
    by_reason = Counter(e["reason"] for e in stored)
    # 14 launches and 14 completions: 10 Events each, and one aggregate counting the other 4.
    assert by_reason["TrialLaunched"] == by_reason["TrialCompleted"] == 11, by_reason
    for reason in ("TrialLaunched", "TrialCompleted"):
        (aggregate,) = [e for e in stored if e["reason"] == reason and e.get("count", 1) > 1]
        assert aggregate["count"] == 4
        assert aggregate["message"].startswith(COMBINED_PREFIX + "Trial ")


def _study(cluster: Cluster, tmp_path: Path) -> dict[str, Any]:
    """A TuningStudy object to hang Events on (no operator runs: the poster alone is tested)."""
    manifest = study_manifest("many", tmp_path / "unused.py")
    return dict(cluster.api.create("tuningstudies", manifest, NS))


def _post_all(cluster: Cluster, uid: str, outcomes: list[EventSpec]) -> None:
    """What the operator does: one EventPoster (fresh memory, like a fresh process)."""
    ref = study_reference(NS, "many", uid)

    async def run() -> None:
        client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        try:
            poster = EventPoster(kubernetes.client.CoreV1Api(client))
            budget = EventBudget()  # a fresh process starts with a fresh budget
            poster.start()
            for event in outcomes:
                poster.post(ref, budget.admit(event, study="many", uid=uid))
            await poster.stop(timeout=120)
        finally:
            client.close()

    asyncio.run(run())


def _outcomes(numbers: range) -> list[EventSpec]:
    states = ("COMPLETE", "PRUNED", "FAIL")
    return [
        outcome_event(i, states[i % 3], values=(i / 1000,), reason="ExitCode", message="boom")
        for i in numbers
    ]


def test_two_hundred_outcomes_leave_a_bounded_number_of_event_objects(
    cluster: Cluster, tmp_path: Path
) -> None:
    uid = _study(cluster, tmp_path)["metadata"]["uid"]
    _post_all(cluster, uid, _outcomes(range(200)))

    stored = events(cluster, "many")
    by_reason = Counter(e["reason"] for e in stored)
    # Per reason: the first 10 one by one, then one aggregate; 33 objects, not 200.
    assert by_reason == {r: DEFAULT_EVENTS_PER_REASON + 1 for r in OUTCOMES}, by_reason
    assert len(stored) == 33
    # Nothing is lost: the counts add up to the 200 outcomes, per reason too.
    assert sum(e["count"] for e in stored) == 200
    told = Counter(e.reason for e in _outcomes(range(200)))
    assert {r: sum(e["count"] for e in stored if e["reason"] == r) for r in OUTCOMES} == told
    aggregates = [e for e in stored if e["count"] > 1]
    assert len(aggregates) == 3
    latest = {e["reason"]: e["message"] for e in aggregates}
    assert latest == {
        "TrialCompleted": COMBINED_PREFIX + "Trial 198 completed with values [0.198]",
        "TrialPruned": COMBINED_PREFIX + "Trial 199 was pruned",
        "TrialFailed": COMBINED_PREFIX + "Trial 197 failed (ExitCode): boom",
    }
    for e in aggregates:
        assert e["involvedObject"]["uid"] == uid
        assert e["lastTimestamp"] >= e["firstTimestamp"]

    # A restarted operator (no memory): 10 more one by one per reason, then it finds the
    # aggregates it left and goes on counting there (45 outcomes: 15 per reason).
    _post_all(cluster, uid, _outcomes(range(200, 245)))
    stored = events(cluster, "many")
    assert Counter(e["reason"] for e in stored) == {
        r: 2 * DEFAULT_EVENTS_PER_REASON + 1 for r in OUTCOMES
    }
    assert sum(e["count"] for e in stored) == 245
    assert len([e for e in stored if e["count"] > 1]) == 3


def test_an_aggregate_that_expired_is_started_again(cluster: Cluster, tmp_path: Path) -> None:
    """The API server drops Events after ``--event-ttl``: folding goes on in a new one."""
    uid = _study(cluster, tmp_path)["metadata"]["uid"]
    name = aggregate_event_name("many", uid, "TrialCompleted")
    done = [outcome_event(i, "COMPLETE", values=(float(i),)) for i in range(6)]
    ref = study_reference(NS, "many", uid)

    async def run() -> None:
        client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        try:
            poster = EventPoster(kubernetes.client.CoreV1Api(client))
            budget = EventBudget(limit=1)
            poster.start()
            for event in done[:3]:
                poster.post(ref, budget.admit(event, study="many", uid=uid))
            await poster.drain(timeout=60)
            assert cluster.api.get("events", name, NS)["count"] == 2
            cluster.api.delete("events", name, NS)  # what the TTL does
            for event in done[3:]:
                poster.post(ref, budget.admit(event, study="many", uid=uid))
            await poster.stop(timeout=60)
        finally:
            client.close()

    asyncio.run(run())
    aggregate = cluster.api.get("events", name, NS)
    assert aggregate["count"] == 3
    assert aggregate["message"] == COMBINED_PREFIX + "Trial 5 completed with values [5.0]"
    assert len(events(cluster, "many")) == 2  # trial 0 on its own, and the aggregate
