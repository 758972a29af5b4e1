"""Status computation from a ledger snapshot (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.spec import TuningStudyStatus
from kubetune.status import (
    ConditionSpec,
    LedgerSnapshot,
    TrialRecord,
    best_trial,
    build_status,
    last_progress,
    merge_conditions,
    pareto_front,
    trial_counts,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def rec(number: int, state: str, *values: float, attempt: int = 0, **params: Any) -> TrialRecord:
    return TrialRecord(
        number=number,
        state=state,  # type: ignore[arg-type]
        params=params or {"lr": 0.1 * (number + 1)},
        values=values or None,
        attempt=attempt,
    )


def test_counts_by_state_with_retries_counted_once() -> None:
    trials = [
        rec(0, "COMPLETE", 0.5),
        rec(1, "COMPLETE", 0.7, attempt=2),
        rec(2, "PRUNED"),
        rec(3, "FAIL", attempt=1),
        rec(4, "RUNNING"),
        rec(5, "WAITING"),
    ]
    assert trial_counts(trials) == {
        "total": 5,
        "running": 1,
        "completed": 2,
        "pruned": 1,
        "failed": 1,
        "retried": 3,
    }


@pytest.mark.parametrize(("direction", "best"), [("maximize", 1), ("minimize", 2)])
def test_best_trial_follows_the_direction(direction: str, best: int) -> None:
    trials = [rec(0, "COMPLETE", 0.5), rec(1, "COMPLETE", 0.9), rec(2, "COMPLETE", 0.1)]
    trials.append(rec(3, "FAIL"))
    trials.append(rec(4, "COMPLETE", float("nan")))
    found = best_trial(trials, direction)
    assert found is not None and found.number == best
    assert best_trial([rec(0, "RUNNING")], direction) is None


def test_best_trial_ties_go_to_the_earliest() -> None:
    trials = [rec(3, "COMPLETE", 0.5), rec(1, "COMPLETE", 0.5)]
    found = best_trial(trials, "maximize")
    assert found is not None and found.number == 1


def test_pareto_front() -> None:
    # maximize accuracy, minimize latency
    trials = [
        rec(0, "COMPLETE", 0.9, 10.0),  # front
        rec(1, "COMPLETE", 0.8, 5.0),  # front
        rec(2, "COMPLETE", 0.7, 6.0),  # dominated by 1
        rec(3, "COMPLETE", 0.9, 12.0),  # dominated by 0
        rec(4, "COMPLETE", 0.95, 20.0),  # front
        rec(5, "PRUNED"),
    ]
    front = pareto_front(trials, ["maximize", "minimize"])
    assert [t.number for t in front] == [0, 1, 4]


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = merge_conditions(
        [], [ConditionSpec("Running", "True", "TrialsRunning", "2")], now=NOW, generation=1
    )
    later = NOW + timedelta(minutes=5)
    same = merge_conditions(
        first, [ConditionSpec("Running", "True", "TrialsRunning", "3")], now=later, generation=2
    )
    assert same[0]["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert same[0]["message"] == "3" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same, [ConditionSpec("Running", "False", "Done", "")], now=later, generation=2
    )
    assert flipped[0]["lastTransitionTime"] == "2026-03-01T12:05:00Z"


def _status(trials: list[TrialRecord], directions: list[str]) -> dict[str, Any]:
    return build_status(
        previous=None,
        generation=3,
        now=NOW,
        ledger=LedgerSnapshot("ml.demo.uid", tuple(trials)),
        directions=directions,
        max_trials=10,
        state="Running",
        message="2 trials running",
        conditions=[ConditionSpec("Running", "True", "TrialsRunning", "")],
        gpu_used=123.4567,
        gpu_saved=10.0,
        start_time=NOW,
        completion_time=None,
    )


def test_status_shape_is_accepted_by_the_spec_model() -> None:
    status = _status(
        [rec(0, "COMPLETE", 0.5, lr=0.01, opt="sgd", bs=64), rec(1, "RUNNING")], ["maximize"]
    )
    assert status["bestTrial"] == {
        "number": 0,
        "values": [0.5],
        "params": {"bs": "64", "lr": "0.01", "opt": "sgd"},
    }
    assert status["bestValue"] == "0.5"
    assert status["progress"] == "1/10"
    assert status["gpuSeconds"] == {"used": 123.457, "savedByPruning": 10.0}
    assert status["optunaStudyName"] == "ml.demo.uid"
    assert status["startTime"] == "2026-03-01T12:00:00Z"
    assert status["completionTime"] is None
    TuningStudyStatus.model_validate(
        {k: v for k, v in status.items() if v is not None}, strict=False
    )


def test_multi_objective_status_lists_the_front() -> None:
    status = _status(
        [rec(0, "COMPLETE", 0.9, 10.0), rec(1, "COMPLETE", 0.8, 12.0)], ["maximize", "minimize"]
    )
    assert status["bestTrial"] is None
    assert [t["number"] for t in status["paretoFront"]] == [0]
    TuningStudyStatus.model_validate(
        {k: v for k, v in status.items() if v is not None}, strict=False
    )


def test_without_a_ledger_the_previous_numbers_are_kept() -> None:
    previous = _status([rec(0, "COMPLETE", 0.5)], ["maximize"])
    status = build_status(
        previous=previous,
        generation=3,
        now=NOW,
        ledger=None,
        directions=["maximize"],
        max_trials=10,
        state="Running",
        message="storage down",
        conditions=[],
        gpu_used=0.0,
        gpu_saved=0.0,
        start_time=None,
        completion_time=None,
    )
    for key in ("trials", "bestTrial", "bestValue", "gpuSeconds", "optunaStudyName", "startTime"):
        assert status[key] == previous[key]


def test_last_progress_is_the_newest_start_finish_or_heartbeat() -> None:
    """A long trial that only heartbeats is progress (KubetuneStudyStalled must not fire)."""
    started = NOW - timedelta(hours=3)
    long_running = TrialRecord(0, "RUNNING", datetime_start=started, heartbeat=NOW)
    finished = TrialRecord(
        1, "COMPLETE", (1.0,), datetime_start=started, datetime_complete=NOW - timedelta(hours=2)
    )
    snap = LedgerSnapshot("s", (long_running, finished))
    assert last_progress(snap) == NOW.timestamp()
    silent = TrialRecord(0, "RUNNING", datetime_start=started)
    assert (
        last_progress(LedgerSnapshot("s", (silent, finished)))
        == (NOW - timedelta(hours=2)).timestamp()
    )
    assert last_progress(LedgerSnapshot("s", (TrialRecord(0, "WAITING"),))) is None


def _front_by_every_pair(trials: list[TrialRecord], directions: list[str]) -> list[int]:
    """The definition, compared pair by pair (what pareto_front computed before)."""
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    done = [t for t in trials if t.state == "COMPLETE" and t.values is not None]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(s * x <= s * y for s, (x, y) in zip(signs, pairs, strict=True)) and any(
            s * x < s * y for s, (x, y) in zip(signs, pairs, strict=True)
        )

    return [
        t.number
        for t in done
        if not any(dominates(o.values or (), t.values or ()) for o in done if o is not t)
    ]


@pytest.mark.parametrize(
    "directions",
    [["minimize", "minimize"], ["maximize", "minimize"], ["maximize", "minimize", "maximize"]],
)
@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_is_the_definition_with_ties_and_duplicates(
    directions: list[str], seed: int
) -> None:
    """Values from a small grid, so ties and duplicate points are common; a duplicate of a
    front point is on the front too (neither dominates the other)."""
    import random

    rng = random.Random(seed)
    trials = [
        rec(n, "COMPLETE", *(float(rng.randint(0, 4)) for _ in directions))
        for n in rng.sample(range(200), 60)
    ]
    trials += [rec(300, "PRUNED"), rec(301, "COMPLETE", *([float("inf")] * len(directions)))]
    found = [t.number for t in pareto_front(trials, directions)]
    assert found == sorted(_front_by_every_pair(trials[:-1], directions))


def test_a_snapshot_finds_trials_by_number_and_stays_a_plain_value() -> None:
    trials = (rec(2, "COMPLETE", 0.5), rec(0, "RUNNING"), rec(2, "FAIL"))
    snap = LedgerSnapshot("s", trials)
    assert snap.trial(0) is trials[1]
    assert snap.trial(2) is trials[0]  # the first record of a number, as the scan found
    assert snap.trial(7) is None
    assert snap == LedgerSnapshot("s", trials)  # the lookup table is not part of the value


def test_pareto_front_of_a_trade_off_keeps_duplicates_and_drops_near_misses() -> None:
    """Two objectives along a trade-off: each near miss is dominated only by its neighbour on
    the front, and a duplicate of a front point is on the front too."""
    trials = [rec(i, "COMPLETE", float(i), 10.0 - i) for i in range(11)]
    trials += [rec(20 + i, "COMPLETE", i + 0.5, 10.0 - i) for i in range(10)]  # near misses
    trials += [rec(40, "COMPLETE", 3.0, 7.0), rec(41, "COMPLETE", 3.0, 7.5)]  # a twin, a miss
    found = [t.number for t in pareto_front(trials, ["minimize", "minimize"])]
    assert found == [*range(11), 40]
    assert found == sorted(_front_by_every_pair(trials, ["minimize", "minimize"]))
