"""PostgreSQL crashes mid-study and stays down a while (``KUBETUNE_SOAK=1``: a minute).

The operator must say so (``StorageReachable=False``), back off, resume when the database is
back, and lose nothing: trainers' reports made during the outage are retried by the SDK.

The precondition is arranged, not hoped for: trial 1 holds after its first step until the test
releases it in the middle of the outage, so it is running when PostgreSQL dies, reports its
remaining steps while the database is down, and completes after it is back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from harness import PostgresServer
from reliability.checks import CRASH_REASONS, assert_exact_accounting
from reliability.world import SOAK, World, study_manifest, wait_seconds

OUTAGE_SECONDS = 60.0 if SOAK else 12.0
STEPS = 6
#: How long the SDK keeps retrying one post against 503 + ``Retry-After: 5`` (8 tries).
SDK_RETRY_SECONDS = 35.0


def test_postgres_down_mid_study_loses_no_result(
    operator_world: World, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    world = operator_world
    gate = tmp_path / "gate"
    gate.mkdir()
    manifest = study_manifest(
        "pgdown", max_trials=6, parallelism=2, steps=STEPS, sleep=0.1, hold=(gate, "1", 0)
    )
    world.apply(manifest)
    world.wait(
        lambda: (
            (gate / "reached-1").exists()
            and (world.status("pgdown").get("trials") or {}).get("completed", 0) >= 1
        ),
        "trial 1 never reached its hold point beside a completed trial",
    )
    outage_start = datetime.now(UTC)
    postgres_server.stop("immediate")  # a crash: no shutdown checkpoint, connections cut
    try:
        cond = world.wait(
            lambda: (
                (c := world.condition("pgdown", "StorageReachable"))
                and c["status"] == "False"
                and c
            ),
            "the operator never said the storage was unreachable",
        )
        assert cond["reason"] == "StorageError"
        assert "unreachable" in cond["message"]
        ready = world.condition("pgdown", "Ready")
        assert ready is not None and ready["status"] == "False"
        wait_seconds(OUTAGE_SECONDS / 2)
        (gate / "release").touch()  # trial 1 reports its remaining steps into the outage
        wait_seconds(OUTAGE_SECONDS / 2)
    finally:
        (gate / "release").touch()
        postgres_server.start()
    outage_end = datetime.now(UTC)

    world.wait_finished("pgdown")
    # An ask cut by the outage (trial created, attempt not yet written) ends as FAIL
    # AskInterrupted, like a crash mid-ask; every other trial completes with its own value.
    trials = assert_exact_accounting(
        world, "pgdown", max_trials=6, allowed_fail_reasons=CRASH_REASONS
    )
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(completed) >= 5, [(t.number, t.state.name) for t in trials]
    # Every intermediate report landed, including those sent while the database was down,
    # as long as the outage is shorter than the SDK's retries (reports are best effort after).
    if OUTAGE_SECONDS < SDK_RETRY_SECONDS:
        for t in completed:
            assert sorted(t.intermediate_values) == list(range(STEPS)), (
                t.number,
                t.intermediate_values,
            )
    spanning = [
        t
        for t in completed
        if t.datetime_start is not None
        and t.datetime_complete is not None
        and t.datetime_start.replace(tzinfo=UTC) < outage_start
        and t.datetime_complete.replace(tzinfo=UTC) > outage_end
    ]
    assert 1 in [t.number for t in spanning], "trial 1 was held through the outage by design"
    reach = world.condition("pgdown", "StorageReachable")
    assert reach is not None and reach["status"] == "True"
