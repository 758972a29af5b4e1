"""Ask-ahead (kubetune.reconcile._ahead): parked trials fill free slots with no ask on the
launch path, are never failed, never lost and never run twice."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from kubetune import reasons as R  # noqa: N812
from kubetune.jobs import job_name
from kubetune.reconcile import LaunchParked, LaunchTrials, ParkTrials, ReleaseParked, Tell
from kubetune.reconcile._ahead import LaunchPlan, ask_ahead, plan_launches
from support.reconcile_world import World, assert_settled, make_spec, of_type


@pytest.mark.parametrize(
    ("free", "room", "parked", "ahead", "expected"),
    [
        (3, 10, (), 1, LaunchPlan(new=3, park=1)),  # first pass: fill, then ask one ahead
        (2, 10, (7,), 1, LaunchPlan(parked=(7,), new=1, park=1)),  # parked first
        (1, 10, (7, 8), 2, LaunchPlan(parked=(7,), park=1)),  # keep two parked
        (0, 10, (7, 8, 9), 1, LaunchPlan(release=(8, 9))),  # askAhead lowered
        (2, 1, (7, 8), 2, LaunchPlan(parked=(7,), release=(8,))),  # maxTrials lowered
        (2, 0, (7,), 1, LaunchPlan(release=(7,))),  # nothing left to launch
        (4, 3, (), 8, LaunchPlan(new=3)),  # never asked beyond maxTrials
        (0, 5, (), 8, LaunchPlan(park=5)),  # ...not even ahead
        (0, 10, (), 0, LaunchPlan()),  # askAhead 0: ask when a slot frees
    ],
)
def test_plan_fills_parked_first_within_the_room(
    free: int, room: int, parked: tuple[int, ...], ahead: int, expected: LaunchPlan
) -> None:
    assert plan_launches(free, room, parked, ahead=ahead, blocked=False) == expected


def test_a_blocked_study_releases_every_parked_trial_and_launches_nothing() -> None:
    plan = plan_launches(5, 10, (3, 4), ahead=2, blocked=True)
    assert plan == LaunchPlan(release=(3, 4))


@pytest.mark.parametrize(
    ("sampler", "parallelism", "ask_ahead_field", "expected"),
    [
        ("Random", 8, None, 8),  # proposals ignore results: parking costs nothing
        ("Random", 50, None, 16),  # ...but each parked trial is held in memory
        ("Grid", 3, None, 3),
        ("TPE", 1, None, 0),  # a sequential study keeps every result for the next ask
        ("TPE", 2, None, 1),
        ("TPE", 8, None, 1),
        ("TPE", 32, None, 4),
        ("TPE", 8, 3, 3),  # said: taken
        ("Random", 4, 50, 4),  # never more than the slots
        ("Random", 4, 0, 0),
    ],
)
def test_ask_ahead_by_sampler(
    sampler: str, parallelism: int, ask_ahead_field: int | None, expected: int
) -> None:
    budget: dict[str, object] = {"parallelism": parallelism, "askAhead": ask_ahead_field}
    spec = make_spec(budget=budget)
    spec = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"type": sampler})})
    assert ask_ahead(spec) == expected


def ahead_world(*, max_trials: int = 6, parallelism: int = 2, ahead: int = 1) -> World:
    budget = {"maxTrials": max_trials, "parallelism": parallelism, "askAhead": ahead}
    return World(make_spec(budget=budget, trial={"result": {"from": "TerminationMessage"}}))


def complete(world: World, trial: int, value: float = 0.5) -> None:
    world.finish(trial, termination_message=f'{{"values": [{value}]}}')


def parked(world: World) -> list[int]:
    return sorted(n for n, t in world.trials.items() if t.parked and t.state == "RUNNING")


def test_first_pass_fills_the_slots_then_parks_one_outside_the_status() -> None:
    world = ahead_world()
    d = world.step()
    assert of_type(d, LaunchTrials) == [LaunchTrials(2)]
    assert of_type(d, ParkTrials) == [ParkTrials(1)]
    assert parked(world) == [2]
    settled = assert_settled(world)
    # A parked trial holds no slot and is not counted: the status shows launched trials.
    assert settled.occupied == 2
    assert settled.status["trials"]["total"] == 2
    assert settled.status["trials"]["running"] == 2


def test_a_free_slot_takes_the_parked_trial_with_its_stored_parameters() -> None:
    world = ahead_world()
    world.step()
    complete(world, 0)
    d = world.step()
    assert of_type(d, LaunchParked) == [LaunchParked(2, {"lr": 0.03})]
    assert of_type(d, LaunchTrials) == []  # no ask on the launch path
    assert of_type(d, ParkTrials) == [ParkTrials(1)]  # the next one, asked after
    assert [a.trial for a in of_type(d, Tell)] == [0]
    # The decision's order: parked launches before the tells and before any ask.
    assert d.parked_launches == (LaunchParked(2, {"lr": 0.03}),)
    assert d.park == 1 and d.launches == 0
    assert world.running_jobs() == [job_name("demo", 1, 0), job_name("demo", 2, 0)]
    assert parked(world) == [3]
    assert_settled(world)


def test_the_study_runs_exactly_max_trials_and_leaves_nothing_parked() -> None:
    world = ahead_world(max_trials=5, parallelism=2, ahead=2)
    for _ in range(12):
        world.step()
        for n in sorted(world.trials):
            t = world.trials[n]
            if t.state == "RUNNING" and not t.parked:
                complete(world, n, value=n / 10)
        world.now += timedelta(seconds=5)
    final = assert_settled(world)
    assert final.state == "Succeeded"
    assert sorted(world.trials) == [0, 1, 2, 3, 4]
    assert all(t.state == "COMPLETE" for t in world.trials.values())
    assert world.max_running_seen <= 2


def test_a_stopped_study_releases_its_parked_trials_and_fails_none() -> None:
    """The goal halts the study: running trials stop (StudyStopped), the parked ones go back
    to WAITING, never failed."""
    spec = ahead_world(ahead=2).spec
    objectives = [spec.objectives[0].model_copy(update={"goal": 0.9})]
    world = World(spec.model_copy(update={"objectives": objectives}))
    world.step()
    assert parked(world) == [2, 3]
    complete(world, 0, value=0.95)
    d = world.step()
    assert sorted(a.trial for a in of_type(d, ReleaseParked)) == [2, 3]
    assert of_type(d, LaunchParked) == [] and of_type(d, ParkTrials) == []
    failed = {a.trial: a.reason for a in of_type(d, Tell) if a.state == "FAIL"}
    assert failed == {1: R.STUDY_STOPPED}
    assert {n: world.trials[n].state for n in (2, 3)} == {2: "WAITING", 3: "WAITING"}
    assert assert_settled(world).state == "Succeeded"


def test_a_suspended_study_releases_parked_trials_and_asks_them_again_on_resume() -> None:
    world = ahead_world()
    world.step()
    world.spec = world.spec.model_copy(update={"suspend": True})
    d = world.step()
    assert of_type(d, ReleaseParked) == [ReleaseParked(2)]
    world.spec = world.spec.model_copy(update={"suspend": False})
    complete(world, 0)
    world.step()
    # Optuna's next ask popped the released trial: same number, same parameters, now running.
    assert world.trials[2].params == {"lr": 0.03}
    assert job_name("demo", 2, 0) in world.running_jobs()
    assert parked(world) == [3]


def test_a_parked_trial_is_never_given_a_missing_job_nor_failed() -> None:
    """The orphan rule (an asked trial with no Job gets one) skips a parked trial: it waits
    for a free slot, however many passes run, and counts as no failure."""
    world = ahead_world()
    world.step()
    for _ in range(3):
        world.now += timedelta(minutes=10)
        d = world.decide()
        assert d.actions == ()
    assert world.trials[2].parked and world.trials[2].state == "RUNNING"


def test_a_restarted_operator_launches_the_parked_trial_it_finds() -> None:
    """The ledger survives a restart, the Jobs are seen again; the parked trial is launched
    when a slot frees, as before the restart."""
    world = ahead_world()
    world.step()
    world.status = {}  # a new process: no previous status in memory
    complete(world, 1)
    d = world.step()
    assert of_type(d, LaunchParked) == [LaunchParked(2, {"lr": 0.03})]


def test_a_parked_trial_whose_job_exists_is_judged_as_running() -> None:
    """The Job was created, then the operator stopped before marking it: the Job is seen, so
    the trial is running (it holds a slot and is told), never launched twice."""
    world = ahead_world()
    world.step()
    name = job_name("demo", 2, 0)
    world.add_job(2, 0)
    world.trials[2] = dataclasses.replace(world.trials[2], parked=True, job_created=-1)
    d = world.decide()
    assert of_type(d, LaunchParked) == [] and d.occupied == 3
    assert name in world.jobs


def test_a_parked_trial_whose_ask_was_cut_short_is_released_not_failed_nor_launched() -> None:
    """The operator stopped (or lost the storage) while asking a trial ahead: it is marked
    parked but its parameters are not all stored. It goes back to WAITING for the next ask
    to finish; it is neither launched with half its parameters nor failed."""
    world = ahead_world()
    world.step()
    world.trials[2] = dataclasses.replace(world.trials[2], params={}, asked=False)
    complete(world, 0)
    d = world.step()
    assert ReleaseParked(2) in d.actions
    assert of_type(d, LaunchParked) == []
    assert all(a.trial != 2 for a in of_type(d, Tell))
    # Released first, the trial is what the slot's ask pops (Optuna asks WAITING first).
    assert of_type(d, LaunchTrials) == [LaunchTrials(1)]
    assert job_name("demo", 2, 0) in world.running_jobs()
