"""Assertions on the state of the world after a fault, shared by the reliability tests.

A finished study must account for every trial exactly once: the ledger (PostgreSQL), the
status and the Jobs agree, nothing is left RUNNING, and every completed trial carries the
value its own parameters produce (so a result told to the wrong trial shows up).
"""

from __future__ import annotations

import collections
from typing import Any

from optuna.trial import TrialState

from kubetune.jobs import LABEL_ATTEMPT, LABEL_TRIAL
from reliability.fake_trainer import value_of
from reliability.world import World
from support.trials import launched

#: Fail reasons a crash may legitimately leave (documented in kubetune.ledger / reconcile).
CRASH_REASONS = {"AskInterrupted"}


def assert_exact_accounting(
    world: World,
    name: str,
    *,
    max_trials: int,
    allowed_fail_reasons: set[str] = frozenset(),  # type: ignore[assignment]
    expect_retries: bool = False,
) -> list[Any]:
    """The invariants every fault test ends with; returns the ledger's trials."""
    status = world.status(name)
    every = world.trials(name)
    trials = launched(every)
    # A trial asked ahead and never launched must have been released (WAITING, no Job: the
    # Jobs below must all belong to launched trials), never left parked.
    assert all(t.state == TrialState.WAITING for t in every if t not in trials), every
    states = collections.Counter(t.state for t in trials)
    # Exact counts: every launched trial is in the ledger once, none is left behind.
    assert len(trials) == max_trials, f"{len(trials)} trials in the ledger, wanted {max_trials}"
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    counts = status["trials"]
    assert counts["total"] == len(trials)
    assert counts["completed"] == states[TrialState.COMPLETE]
    assert counts["failed"] == states[TrialState.FAIL]
    assert counts["pruned"] == states[TrialState.PRUNED]
    assert counts["running"] == 0
    assert status["state"] in ("Succeeded", "Failed")
    # Each result belongs to its own trial.
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.values == [value_of(t.params)], (t.number, t.values, t.params)
        elif t.state == TrialState.FAIL:
            reason = t.user_attrs.get("kubetune:fail_reason")
            assert reason in allowed_fail_reasons, (t.number, reason, t.user_attrs)
    # Jobs: one per (trial, attempt), only for trials in the ledger, attempts consecutive.
    numbers = {t.number for t in trials}
    attempts: dict[int, set[int]] = collections.defaultdict(set)
    for job in _all_jobs_ever(world, name):
        labels = job["metadata"]["labels"]
        trial, attempt = int(labels[LABEL_TRIAL]), int(labels[LABEL_ATTEMPT])
        assert trial in numbers, f"Job {job['metadata']['name']} for unknown trial {trial}"
        attempts[trial].add(attempt)
    for trial, seen in attempts.items():
        assert seen == set(range(len(seen))), f"trial {trial} has attempts {sorted(seen)}"
        if not expect_retries:
            assert seen == {0}, f"trial {trial} was retried ({sorted(seen)}) with no disruption"
    # No Job was created twice (deleted and re-created under the same attempt's name).
    created = collections.Counter(
        e.obj["metadata"]["name"]
        for e in world.cluster.history
        if e.key == "jobs.batch"
        and e.type == "ADDED"
        and (e.obj["metadata"].get("labels") or {}).get("kubetune.io/study") == name
    )
    assert all(n == 1 for n in created.values()), created
    assert world.cluster.kubelet.running_processes() == 0
    return trials


def _all_jobs_ever(world: World, name: str) -> list[dict[str, Any]]:
    """Every Job of the study the API ever stored (deleted ones included), once each."""
    seen: dict[str, dict[str, Any]] = {}
    for event in world.cluster.history:
        if event.key != "jobs.batch":
            continue
        labels = event.obj["metadata"].get("labels") or {}
        if labels.get("kubetune.io/study") == name:
            seen.setdefault(event.obj["metadata"]["uid"], event.obj)
    return list(seen.values())
