"""The API server misbehaves at ~10 %: 429 with Retry-After, 500s, 409 on status patches,
slow answers, dropped watch connections, watches answered 410 Gone. Studies still converge with
exact counts. The faults come from the proxy in front of the real apiserver.
"""

from __future__ import annotations

import threading
import time

from reliability.checks import CRASH_REASONS, assert_exact_accounting
from reliability.world import SOAK, World, study_manifest

FAULT_SECONDS = 90.0 if SOAK else 20.0


def test_studies_converge_under_api_faults(operator_world: World) -> None:
    world = operator_world
    api = world.api
    # Let the operator start cleanly; a real cluster's API is healthy when the pod starts.
    world.wait(lambda: "Started kubetune operator" in world.logs(), "operator never started")
    rules = [
        # Every nth request rather than a probability: how many requests a run makes depends
        # on the machine's speed, and each fault must happen at least once in every run.
        api.faults.add(path=r"/apis?/", status=429, retry_after=1, every=25),
        api.faults.add(path=r"/apis?/", status=500, every=31),
        api.faults.add(
            path=r"/tuningstudies/[^/]+/status$", methods=("PATCH",), status=409, every=9
        ),
        api.faults.add(path=r"/apis?/", hang=True, hang_seconds=0.7, every=29),
    ]
    stop = threading.Event()

    def drop_watches() -> None:
        while not stop.wait(1.5):
            api.drop_watches()
            api.proxy.gone_watches(1)  # the next watch finds its resourceVersion expired

    dropper = threading.Thread(target=drop_watches, daemon=True)
    dropper.start()
    studies = [
        study_manifest("flaky-a", max_trials=soak_trials(8), parallelism=3, steps=2),
        study_manifest(
            "flaky-b",
            max_trials=soak_trials(6),
            parallelism=2,
            steps=1,
            result="TerminationMessage",
        ),
    ]
    started = time.monotonic()
    try:
        for manifest in studies:
            world.apply(manifest)
        world.wait(
            lambda: (
                all(
                    world.status(m["metadata"]["name"]).get("state") in ("Succeeded", "Failed")
                    for m in studies
                )
                or time.monotonic() - started > FAULT_SECONDS
            ),
            "the fault window did not end",
        )
    finally:
        stop.set()
        dropper.join(5)
        api.faults.clear()
    for manifest in studies:
        name = manifest["metadata"]["name"]
        world.wait_finished(name)
        assert_exact_accounting(
            world,
            name,
            max_trials=manifest["spec"]["budget"]["maxTrials"],
            allowed_fail_reasons=CRASH_REASONS,
        )
    # The faults really happened (otherwise this test tested nothing).
    assert all(rule.hits > 0 for rule in rules), [(r.status, r.hang, r.hits) for r in rules]
    codes = {r.status for r in api.requests}
    assert {429, 500, 409, 410} <= codes
    assert world.operator_alive(), "the operator died under API faults"


def soak_trials(n: int) -> int:
    return n * 3 if SOAK else n
