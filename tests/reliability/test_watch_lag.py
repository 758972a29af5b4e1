"""The operator's Job watch lags far behind the API (kopf under load, issue 17): Jobs it created
stay missing from its index well past the time it expects them. A missing Job is not a deleted
one: the operator must read it directly before relaunching, so no trial runs twice.

The lag comes from the fault proxy: it holds the operator's Job watch requests, so kopf sees no
Job event while the study launches; the expectation window is cut to 1 s so that the wait for
the watch ends many times over during the lag.
"""

from __future__ import annotations

import re
from pathlib import Path

from reliability.checks import assert_exact_accounting
from reliability.world import World, study_manifest

#: How long the proxy holds each Job watch request of the operator.
LAG_SECONDS = 15.0


def test_a_lagging_job_watch_never_relaunches_a_running_trial(world: World, tmp_path: Path) -> None:
    world.extra_env["KUBETUNE_EXPECTATION_SECONDS"] = "1"
    world.start_operator()
    api = world.api
    world.wait(lambda: "Started kubetune operator" in world.logs(), "operator never started")
    gate = tmp_path / "gate"
    gate.mkdir()
    lag = api.faults.add(path=r"/jobs$", verbs=("watch",), hang=True, hang_seconds=LAG_SECONDS)
    try:
        api.drop_watches()  # the operator re-watches Jobs, into the held request
        world.wait(lambda: lag.hits > 0, "the operator never re-watched its Jobs")
        manifest = study_manifest("lag", max_trials=3, parallelism=2, hold=(gate, "0,1", 0))
        world.apply(manifest)
        # Both trials run (their pods are mid-flight) while the operator cannot see their Jobs;
        # then wait until it has judged them unseen past its expectation: the old code
        # relaunched them as JobDeleted here, this one reads each Job and finds it.
        world.wait(
            lambda: all((gate / f"reached-{n}").exists() for n in (0, 1)),
            "the first two trials never started",
        )
        world.wait(
            lambda: all(judged(world.logs(), n) for n in (0, 1)),
            "the operator never judged its unseen Jobs",
        )
    finally:
        api.faults.remove(lag)
    (gate / "release").touch()
    world.wait_finished("lag")
    # Exact counts, one Job per trial, attempt 0 only: nothing was relaunched or run twice.
    assert_exact_accounting(world, "lag", max_trials=3)
    assert "Relaunched trial" not in world.logs()
    assert world.status("lag")["trials"]["retried"] == 0
    # The unseen Jobs were read directly (found), which is what kept them.
    reads = {r.name for r in api.requests_for("jobs", "get") if r.status == 200}
    assert reads >= {"lag-0", "lag-1"}, reads


def judged(logs: str, trial: int) -> bool:
    """The operator acted on trial's unseen Job: read it and found it, or relaunched it."""
    found = re.search(rf"the watch lags study=\S+ job=lag-{trial}$", logs, re.MULTILINE)
    return found is not None or f"trial={trial} attempt=1 " in logs
