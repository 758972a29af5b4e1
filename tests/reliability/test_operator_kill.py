"""The operator SIGKILLed at random points of running studies, then restarted, many times.

Afterwards every study finishes with exact counts: no lost trial, no duplicate Job for a
trial attempt, no trial counted twice, no RUNNING trial left behind. kopf runs as a child
process (``kopf run -m kubetune.handlers``), so the kill is a real SIGKILL.
"""

from __future__ import annotations

import random

from reliability.checks import CRASH_REASONS, assert_exact_accounting
from reliability.world import NS, World, soak, study_manifest, wait_seconds

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
    busy_kills = 0
    for _ in range(KILLS):
        wait_seconds(rng.uniform(0.3, 3.0))  # somewhere in startup, a launch, a tell, a patch
        if any(
            (world.status(m["metadata"]["name"]).get("trials") or {}).get("running")
            or not world.status(m["metadata"]["name"])
            for m in (reporter, termmsg)
        ):
            busy_kills += 1
        world.kill_operator()
        wait_seconds(rng.uniform(0.0, 1.0))
        world.start_operator()
    for manifest in (reporter, termmsg):
        name = manifest["metadata"]["name"]
        world.wait_finished(name, timeout=180)
        assert_exact_accounting(
            world,
            name,
            max_trials=manifest["spec"]["budget"]["maxTrials"],
            allowed_fail_reasons=CRASH_REASONS,
        )
    assert world.starts == KILLS + 1
    # Most kills hit a study with trials in flight (otherwise this tested little).
    assert busy_kills >= KILLS // 2, f"only {busy_kills} of {KILLS} kills hit running trials"
    conflicts = [r for r in world.api.requests_for("jobs", "create") if r.status == 409]
    print(
        f"\n{KILLS} kills, {busy_kills} with trials in flight; {len(conflicts)} Job creates "
        "answered 409 (a restarted operator re-creating what existed: harmless)"
    )


def test_what_happens_while_the_operator_is_down_is_reconciled_once(world: World) -> None:
    """Down: a pod is evicted, a Job is deleted by hand, a trainer finishes and keeps retrying
    its completion. Back up: each is handled exactly once (two retries, one result).
    """
    name = "away"
    world.start_operator()
    world.apply(study_manifest(name, max_trials=3, parallelism=3, steps=16, sleep=0.25))
    kubelet = world.cluster.kubelet
    pods = {n: _running_pod(world, f"{name}-{n}") for n in range(3)}
    world.kill_operator()
    kubelet.evict(str(pods[0]), NS)
    world.api.delete("jobs", f"{name}-1", NS, propagation="Background")  # kubectl delete job
    world.wait(
        lambda: kubelet.running_processes() == 1, 30, "the evicted/deleted pods kept running"
    )
    wait_seconds(4.5)  # trial 2 finishes now, with its report API gone: the SDK retries
    world.start_operator()
    world.wait_finished(name, timeout=120)
    trials = assert_exact_accounting(world, name, max_trials=3, expect_retries=True)
    attempts = {t.number: t.user_attrs.get("kubetune:attempt") for t in trials}
    assert attempts == {0: 1, 1: 1, 2: 0}
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert world.status(name)["trials"]["retried"] == 2


def _running_pod(world: World, job: str) -> str:
    def pod() -> str | None:
        return world.cluster.kubelet.active_pod(job, NS)

    return str(world.wait(pod, 60, f"no running pod for {job}"))
