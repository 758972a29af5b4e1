"""The operator SIGKILLed at random points of running studies, then restarted, many times.

Afterwards every study finishes with exact counts: no lost trial, no duplicate Job for a
trial attempt, no trial counted twice, no RUNNING trial left behind. kopf runs as a child
process (``kopf run -m kubetune.handlers``), so the kill is a real SIGKILL.
"""

from __future__ import annotations

import random
from pathlib import Path

from reliability.checks import CRASH_REASONS, assert_exact_accounting
from reliability.world import FINISHED, NS, World, soak, study_manifest, wait_seconds

KILLS = soak(4, 24)


def test_operator_killed_at_random_points_converges_exactly(world: World) -> None:
    rng = random.Random(20261124)
    reporter = study_manifest("kill-rep", max_trials=soak(10, 30), parallelism=3, steps=3)
    termmsg = study_manifest(
        "kill-term", max_trials=soak(8, 24), parallelism=2, steps=2, result="TerminationMessage"
    )
    world.start_operator()
    world.apply(reporter)
    world.apply(termmsg)
    kubelet = world.cluster.kubelet
    names = [m["metadata"]["name"] for m in (reporter, termmsg)]
    busy_kills = kills = 0
    for _ in range(KILLS):
        # Trials in flight first (however long the restart took), then a random moment more:
        # somewhere in a launch, a tell, a patch.
        world.wait(
            lambda: kubelet.running_processes() > 0 or all(_finished(world, n) for n in names),
            "no trial ran after the operator (re)started",
        )
        if all(_finished(world, n) for n in names):
            break  # asserted below: most kills must have hit trials in flight
        wait_seconds(rng.uniform(0.0, 2.0))
        busy_kills += any(_in_flight(world, n) for n in names)
        kills += 1
        world.kill_operator()
        wait_seconds(rng.uniform(0.0, 1.0))
        world.start_operator()
    for manifest in (reporter, termmsg):
        name = manifest["metadata"]["name"]
        world.wait_finished(name)
        assert_exact_accounting(
            world,
            name,
            max_trials=manifest["spec"]["budget"]["maxTrials"],
            allowed_fail_reasons=CRASH_REASONS,
        )
    assert world.starts == kills + 1
    # Most kills hit a study with trials in flight (otherwise this tested little).
    assert busy_kills >= KILLS // 2, f"only {busy_kills} of {KILLS} kills hit running trials"
    conflicts = [r for r in world.api.requests_for("jobs", "create") if r.status == 409]
    print(
        f"\n{kills} kills, {busy_kills} with trials in flight; {len(conflicts)} Job creates "
        "answered 409 (a restarted operator re-creating what existed: harmless)"
    )


def test_what_happens_while_the_operator_is_down_is_reconciled_once(
    world: World, tmp_path: Path
) -> None:
    """Down: a pod is evicted, a Job is deleted by hand, a trainer finishes and keeps retrying
    its completion. Back up: each is handled exactly once (two retries, one result).
    """
    name = "away"
    # Each trial holds after its last report until released: all three run when the
    # operator dies, and trial 2 sends its result only once the operator is down.
    gate = tmp_path / "gate"
    gate.mkdir()
    world.start_operator()
    world.apply(study_manifest(name, max_trials=3, parallelism=3, steps=2, hold=(gate, "0,1,2", 1)))
    kubelet = world.cluster.kubelet
    world.wait_reached(gate, ["0", "1", "2"])
    pods = {n: _running_pod(world, f"{name}-{n}") for n in range(3)}
    world.kill_operator()
    kubelet.evict(str(pods[0]), NS)
    world.api.delete("jobs", f"{name}-1", NS, propagation="Background")  # kubectl delete job
    world.wait(lambda: kubelet.running_processes() == 1, "the evicted/deleted pods kept running")
    world.release(gate)  # trial 2 completes with its report API gone: the SDK retries
    world.wait((gate / "completing-2").exists, "trial 2 never sent its result")
    world.start_operator()
    world.wait_finished(name)
    trials = assert_exact_accounting(world, name, max_trials=3, expect_retries=True)
    attempts = {t.number: t.user_attrs.get("kubetune:attempt") for t in trials}
    assert attempts == {0: 1, 1: 1, 2: 0}
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert world.status(name)["trials"]["retried"] == 2


def _running_pod(world: World, job: str) -> str:
    def pod() -> str | None:
        return world.cluster.kubelet.active_pod(job, NS)

    return str(world.wait(pod, f"no running pod for {job}"))


def _finished(world: World, name: str) -> bool:
    return world.status(name).get("state") in FINISHED


def _in_flight(world: World, name: str) -> bool:
    """The study has trials running by its status, or no status yet (being set up)."""
    status = world.status(name)
    return not status or bool((status.get("trials") or {}).get("running"))
