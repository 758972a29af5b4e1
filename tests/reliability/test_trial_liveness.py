"""Trials that are retried or go silent, on the real control plane (issue 16, items 1, 3, 8):

- a retried attempt reports its steps again with other values: accepted, the trial completes
  and Optuna keeps the new attempt's curve (the retry the eviction earned is not lost), also
  when the retry's Job is deleted by hand (one more attempt, the trial counted once);
- ``trial.heartbeatTimeoutSeconds``: a hung Reporter-mode trainer (alive, silent) fails with
  ``HeartbeatTimeout``, its Job is deleted and its slot is reused, also when the operator
  restarted while it hung; a trainer that heartbeats through a long step is left alone;
- the study's last-progress gauge moves on heartbeats, not only when a trial finishes.
"""

from __future__ import annotations

import re
import time
import urllib.request

from reliability.checks import assert_exact_accounting
from reliability.world import NS, World, free_port, study_manifest
from support.hold import WAIT_SECONDS

STEPS = 4
DRIFT = 0.25
TIMEOUT = 20


def test_retried_attempt_reports_a_different_curve_and_completes(
    operator_world: World,
) -> None:
    world = operator_world
    name = "rerun-curve"
    gate = world.tmp / "gate"
    gate.mkdir()
    manifest = study_manifest(
        name,
        max_trials=1,
        parallelism=1,
        steps=STEPS,
        sleep=0.05,
        hold=(gate, "0", 2),
        extra_args=("--attempt-drift", str(DRIFT)),
    )
    world.apply(manifest)
    world.wait((gate / "reached-0").exists, "trial 0 never reached step 2")
    pod = world.wait(lambda: world.cluster.kubelet.active_pod(f"{name}-0", NS), "no running pod")
    world.cluster.kubelet.evict(str(pod), NS)
    (gate / "release").touch()
    world.wait_finished(name)

    trials = assert_exact_accounting(world, name, max_trials=1, expect_retries=True)
    trial = trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.user_attrs["kubetune:attempt"] == 1
    final = trial.values[0]
    # Attempt 1 re-reported steps 0..2 with other values: its curve replaced attempt 0's.
    assert trial.intermediate_values == {
        step: final * (step + 1) / STEPS + DRIFT for step in range(STEPS)
    }


def test_job_deleted_by_hand_during_a_retry_is_retried_again_and_counted_once(
    operator_world: World,
) -> None:
    """Bad input: the retried attempt's Job deleted by hand. The attempt counts as an
    infrastructure failure (JobDeleted): attempt 2 runs, reports its own curve, completes."""
    world = operator_world
    name = "rerun-deleted"
    gate = world.tmp / "gate"
    gate.mkdir()
    reached = gate / "reached-0"  # every attempt of trial 0 waits after step 2
    manifest = study_manifest(
        name,
        max_trials=1,
        parallelism=1,
        steps=STEPS,
        sleep=0.05,
        hold=(gate, "0", 2),
        extra_args=("--attempt-drift", str(DRIFT)),
    )
    world.apply(manifest)
    world.wait(reached.exists, "attempt 0 never reached step 2")
    pod = world.wait(lambda: world.cluster.kubelet.active_pod(f"{name}-0", NS), "no running pod")
    world.cluster.kubelet.evict(str(pod), NS)
    reached.unlink()
    world.wait(reached.exists, "attempt 1 never reached step 2")
    reached.unlink()
    world.api.delete("jobs", f"{name}-0-r1", NS, propagation="Background")  # kubectl delete
    world.wait(reached.exists, "attempt 2 never reached step 2")
    (gate / "release").touch()
    world.wait_finished(name)

    (trial,) = assert_exact_accounting(world, name, max_trials=1, expect_retries=True)
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.user_attrs["kubetune:attempt"] == 2
    final = trial.values[0]
    assert trial.intermediate_values == {
        step: final * (step + 1) / STEPS + 2 * DRIFT for step in range(STEPS)
    }
    status = world.status(name)
    assert (status["trials"]["total"], status["trials"]["retried"]) == (1, 2)  # 2 retries


def _gauge(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url, timeout=WAIT_SECONDS) as response:
        text = response.read().decode()
    pattern = (
        rf'^kubetune_study_last_progress_timestamp_seconds\{{[^}}]*study="{name}"[^}}]*\}} (\S+)$'
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_silent_trainer_times_out_and_frees_its_slot_across_a_restart(world: World) -> None:
    metrics_port = free_port()
    world.extra_env["KUBETUNE_METRICS_PORT"] = str(metrics_port)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    world.start_operator()
    name = "silent"
    gate = world.tmp / "gate"
    gate.mkdir()
    manifest = study_manifest(
        name,
        max_trials=3,
        parallelism=2,
        steps=2,
        sleep=0.05,
        # Trials 0 and 1 wait after step 0: 0 in silence (hung), 1 heartbeating every second.
        hold=(gate, "0,1", 0),
        extra_args=("--heartbeat-trials", "1", "--heartbeat-every", "1"),
    )
    manifest["spec"]["trial"]["heartbeatTimeoutSeconds"] = TIMEOUT
    world.apply(manifest)
    for number in (0, 1):
        world.wait((gate / f"reached-{number}").exists, f"trial {number} not held")

    # Progress is any report, heartbeat, launch or finish: with both trials waiting and none
    # finished, trial 1's heartbeats still move the gauge.
    held = time.time() + 1.0

    def progressed_before_any_finish() -> bool:
        value = _gauge(metrics_url, name)
        done = [t for t in world.trials(name) if t.state.is_finished()]
        return value is not None and value > held and not done

    world.wait(progressed_before_any_finish, "heartbeats did not move the gauge", TIMEOUT - 5)

    # The silence is judged from the database and the pods, not the operator's memory.
    world.stop_operator()
    world.start_operator()

    def timed_out() -> bool:
        return any(
            t.number == 0
            and t.state.name == "FAIL"
            and t.user_attrs.get("kubetune:fail_reason") == "HeartbeatTimeout"
            for t in world.trials(name)
        )

    world.wait(timed_out, "the silent trial 0 never failed with HeartbeatTimeout")
    world.wait(lambda: world.api.find("jobs", f"{name}-0", NS) is None, "Job 0 not deleted")
    # Its slot is reused while trial 1 still waits, heartbeating, past the timeout.
    world.wait(lambda: world.api.find("jobs", f"{name}-2", NS), "trial 2 never launched")
    one = next(t for t in world.trials(name) if t.number == 1)
    assert one.state.name == "RUNNING", one.user_attrs

    (gate / "release").touch()
    world.wait_finished(name)
    trials = assert_exact_accounting(
        world, name, max_trials=3, allowed_fail_reasons={"HeartbeatTimeout"}
    )
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "heartbeatTimeoutSeconds: 20" in trials[0].user_attrs["kubetune:fail_message"]
