"""Pod disruptions end in the states the operator documents (kubetune.reconcile, kubetune.jobs):

- eviction, node loss, preemption (pod condition ``DisruptionTarget``): the same parameters are
  retried as a new attempt, up to ``maxRetries``, and the trial is counted once;
  retries exhausted: FAIL ``RetriesExhausted``;
- OOMKilled: exit code 137 with no ``DisruptionTarget``, so it is a user error: FAIL
  ``ExitCode`` at once, no retry (a bigger memory limit is the user's fix, not a retry);
- a non-zero exit: FAIL ``ExitCode``, no retry;
- image pull errors: ``PodsHealthy=False`` (``ImagePullFailed``), then after the grace period
  FAIL ``ImagePullFailed`` and the Job is deleted;
- unschedulable: ``PodsHealthy=False`` (``Unschedulable``), the trial waits (not failed) and
  runs once the pod can be scheduled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import Kubelet
from reliability.checks import assert_exact_accounting
from reliability.world import NS, World, study_manifest


def _running_pod(world: World, job: str) -> str:
    return str(
        world.wait(lambda: world.cluster.kubelet.active_pod(job, NS), f"no running pod for {job}")
    )


def _gate(tmp_path: Path) -> Path:
    """Where held trials wait: each attempt of trial 0 holds after its first step until the
    test releases it, so a disruption surely finds it running, however slow the machine."""
    gate = tmp_path / "gate"
    gate.mkdir()
    return gate


def _fail_info(world: World, name: str, number: int) -> tuple[str, str, str]:
    trial = next(t for t in world.trials(name) if t.number == number)
    return (
        trial.state.name,
        str(trial.user_attrs.get("kubetune:fail_reason")),
        str(trial.user_attrs.get("kubetune:fail_message", "")),
    )


def _reasons(world: World) -> set[str]:
    return {str(e.get("reason")) for e in world.events()}


DISRUPTIONS: dict[str, Callable[[Kubelet, str], None]] = {
    "evict": lambda k, pod: k.evict(pod, NS),
    "lose_node": lambda k, pod: k.lose_node(pod, NS),
    "preempt": lambda k, pod: k.preempt(pod, NS),
}


@pytest.mark.parametrize("verb", list(DISRUPTIONS))
def test_disrupted_trial_is_retried_with_the_same_parameters(
    operator_world: World, verb: str, tmp_path: Path
) -> None:
    world = operator_world
    name = f"dis-{verb.replace('_', '')}"
    gate = _gate(tmp_path)
    world.apply(study_manifest(name, max_trials=2, parallelism=2, steps=2, hold=(gate, "0", 0)))
    pod = _running_pod(world, f"{name}-0")
    DISRUPTIONS[verb](world.cluster.kubelet, pod)
    world.wait(
        lambda: (
            world.api.find("jobs", f"{name}-0-r1", NS)
            and world.cluster.kubelet.active_pod(f"{name}-0", NS) is None
        ),
        "the disrupted attempt was not stopped and retried",
    )
    world.release(gate)  # the retry goes through its hold
    world.wait_finished(name)
    trials = assert_exact_accounting(world, name, max_trials=2, expect_retries=True)
    first = next(t for t in trials if t.number == 0)
    assert first.state.name == "COMPLETE"
    assert first.user_attrs["kubetune:attempt"] == 1
    retry = world.api.get("jobs", f"{name}-0-r1", NS)
    original = world.api.find("jobs", f"{name}-0", NS)
    env = {
        e["name"]: e.get("value") for e in retry["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETUNE_TRIAL_ATTEMPT"] == "1"
    assert env["KUBETUNE_PARAMS"] is not None
    if original is not None:
        env0 = {
            e["name"]: e.get("value")
            for e in original["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env0["KUBETUNE_PARAMS"] == env["KUBETUNE_PARAMS"]  # the same parameters
    status = world.status(name)
    assert status["trials"]["retried"] == 1
    assert status["trials"]["total"] == 2  # counted once
    assert "TrialRetried" in _reasons(world)


def test_retries_exhausted_fail_the_trial(operator_world: World, tmp_path: Path) -> None:
    world = operator_world
    name = "dis-exhaust"
    gate = _gate(tmp_path)
    world.apply(
        study_manifest(
            name, max_trials=1, parallelism=1, max_retries=1, steps=2, hold=(gate, "0", 0)
        )
    )
    world.cluster.kubelet.evict(_running_pod(world, f"{name}-0"), NS)
    world.cluster.kubelet.evict(_running_pod(world, f"{name}-0-r1"), NS)
    world.wait_finished(name)
    world.release(gate)
    assert_exact_accounting(
        world, name, max_trials=1, allowed_fail_reasons={"RetriesExhausted"}, expect_retries=True
    )
    state, reason, _ = _fail_info(world, name, 0)
    assert (state, reason) == ("FAIL", "RetriesExhausted")
    assert world.api.find("jobs", f"{name}-0-r2", NS) is None  # no third attempt
    assert world.status(name)["state"] == "Failed"  # no trial completed


def test_oom_killed_is_a_user_error_not_retried(operator_world: World, tmp_path: Path) -> None:
    world = operator_world
    name = "dis-oom"
    gate = _gate(tmp_path)
    world.apply(study_manifest(name, max_trials=1, parallelism=1, steps=2, hold=(gate, "0", 0)))
    world.cluster.kubelet.oom(_running_pod(world, f"{name}-0"), NS)
    world.wait_finished(name)
    world.release(gate)
    assert_exact_accounting(world, name, max_trials=1, allowed_fail_reasons={"ExitCode"})
    state, reason, message = _fail_info(world, name, 0)
    assert (state, reason) == ("FAIL", "ExitCode")
    assert "137" in message, message
    assert world.api.find("jobs", f"{name}-0-r1", NS) is None


def test_nonzero_exit_fails_without_retry(operator_world: World) -> None:
    world = operator_world
    name = "dis-exit"
    world.apply(study_manifest(name, max_trials=2, parallelism=2, steps=1, exit_code=3))
    world.wait_finished(name)
    assert_exact_accounting(world, name, max_trials=2, allowed_fail_reasons={"ExitCode"})
    for number in (0, 1):
        state, reason, message = _fail_info(world, name, number)
        assert (state, reason) == ("FAIL", "ExitCode")
        assert "3" in message
    assert "TrialFailed" in _reasons(world) or world.status(name)["trials"]["failed"] == 2


def test_image_pull_error_reports_then_fails_the_trial(operator_world: World) -> None:
    world = operator_world
    name = "dis-pull"
    world.cluster.kubelet.image_pull_error(f"{name}-*", NS, 'failed to pull "nope": not found')
    world.apply(study_manifest(name, max_trials=1, parallelism=1, steps=1))
    world.wait(
        lambda: _condition_is(world, name, "PodsHealthy", "False", "ImagePullFailed"),
        "PodsHealthy never reported the image pull error",
    )
    world.wait_finished(name)
    assert_exact_accounting(world, name, max_trials=1, allowed_fail_reasons={"ImagePullFailed"})
    state, reason, _ = _fail_info(world, name, 0)
    assert (state, reason) == ("FAIL", "ImagePullFailed")
    world.wait(lambda: world.api.find("jobs", f"{name}-0", NS) is None, "Job not deleted")


def test_unschedulable_trial_waits_then_runs(operator_world: World) -> None:
    world = operator_world
    name = "dis-sched"
    kubelet = world.cluster.kubelet
    manifest = study_manifest(name, max_trials=1, parallelism=1, steps=1)
    container = manifest["spec"]["trial"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": "9"}}  # the node has 8
    world.apply(manifest)
    cond: Any = world.wait(
        lambda: _condition_is(world, name, "PodsHealthy", "False", "Unschedulable"),
        "PodsHealthy never reported the unschedulable pod",
    )
    assert "Insufficient" in cond["message"]
    # Waiting for capacity is not a failure: the trial is still RUNNING in the ledger.
    assert [t.state.name for t in world.trials(name)] == ["RUNNING"]
    kubelet.set_gpus(16)  # capacity arrives (a node joins): the real scheduler places the pod
    world.wait_finished(name)
    trials = assert_exact_accounting(world, name, max_trials=1)
    assert trials[0].state.name == "COMPLETE"
    assert _condition_is(world, name, "PodsHealthy", "True", None)


def _condition_is(
    world: World, name: str, ctype: str, status: str, reason: str | None
) -> dict[str, Any] | None:
    cond = world.condition(name, ctype)
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None
