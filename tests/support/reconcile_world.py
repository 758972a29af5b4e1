"""A simulated world for the reconcile decision: ``World`` applies a decision's actions the
way the shell does (Optuna gives trial numbers, released trials come back first, Jobs appear,
tells finish trials), so tests assert on the world after a few rounds and on level-based
idempotence: deciding again changes nothing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from kubetune.jobs import job_name
from kubetune.observed_job import JobPhase, ObservedJob
from kubetune.reconcile import (
    CreateJob,
    Decision,
    DeleteJob,
    LaunchParked,
    LaunchTrials,
    ParkTrials,
    RecordUsage,
    RelaunchAttempt,
    ReleaseParked,
    SuspendJob,
    Tell,
    VerifyJobGone,
    decide,
    spec_hash,
)
from kubetune.spec import TuningStudySpec, parse_manifest
from kubetune.status import LedgerSnapshot, TrialRecord, TrialStateName, TrialUsage

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_spec(
    *,
    budget: dict[str, Any] | None = None,
    trial: dict[str, Any] | None = None,
    objectives: int = 1,
    suspend: bool = False,
    lr_high: float = 0.1,
) -> TuningStudySpec:
    gpu_container = {
        "name": "trainer",
        "image": "trainer:1",
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "demo"},
        "spec": {
            "objectives": [
                {"name": f"o{i}", "direction": "maximize" if i == 0 else "minimize"}
                for i in range(objectives)
            ],
            "searchSpace": [{"name": "lr", "float": {"low": 1e-4, "high": lr_high}}],
            # Ask-ahead has its own tests (test_reconcile_ahead); here slots fill by asking.
            "budget": {"maxTrials": 6, "parallelism": 2, "askAhead": 0, **(budget or {})},
            "suspend": suspend,
            "trial": {"maxRetries": 1, "template": {"spec": {"containers": [gpu_container]}}}
            | (trial or {}),
        },
    }
    return parse_manifest(manifest).spec


@dataclasses.dataclass
class World:
    """The Jobs and the ledger as the shell would leave them after applying actions."""

    spec: TuningStudySpec
    now: datetime = T0
    trials: dict[int, TrialRecord] = dataclasses.field(default_factory=dict)
    jobs: dict[str, ObservedJob] = dataclasses.field(default_factory=dict)
    usage: dict[int, TrialUsage] = dataclasses.field(default_factory=dict)
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    stored_hash: str | None = None
    generation: int = 1
    max_running_seen: int = 0
    #: (trial, attempt) whose Job a direct read found absent (the shell's answer to
    #: VerifyJobGone); ``lagging`` Jobs exist in the API but not in the watch (``jobs``).
    gone: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    lagging: dict[str, ObservedJob] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stored_hash = self.stored_hash or spec_hash(self.spec)

    def ledger(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            "ns.demo.uid",
            tuple(self.trials[n] for n in sorted(self.trials)),
            self.stored_hash,
            dict(self.usage),
        )

    def decide(self, **kw: Any) -> Decision:
        return decide(
            self.spec,
            self.generation,
            list(self.jobs.values()),
            self.ledger(),
            self.now,
            previous_status=self.status,
            **({"gone": frozenset(self.gone)} | kw),
        )

    def add_job(self, trial: int, attempt: int) -> None:
        name = job_name("demo", trial, attempt)
        self.jobs[name] = ObservedJob(name, trial, attempt, "Active", start_time=self.now)
        t = self.trials[trial]
        self.trials[trial] = dataclasses.replace(
            t, job_created=max(t.job_created, attempt), parked=False
        )

    def ask(self, *, parked: bool = False) -> int:
        """Optuna's ask: a released (WAITING) trial first, with its parameters."""
        waiting = sorted(n for n, t in self.trials.items() if t.state == "WAITING")
        n = waiting[0] if waiting else len(self.trials)
        params = self.trials[n].params if waiting else {"lr": 0.01 * (n + 1)}
        self.trials[n] = TrialRecord(n, "RUNNING", params, parked=parked)
        return n

    def apply(self, d: Decision) -> None:
        for a in d.actions:
            if isinstance(a, LaunchTrials):
                for _ in range(a.count):
                    self.add_job(self.ask(), 0)
            elif isinstance(a, LaunchParked):
                self.add_job(a.trial, 0)
            elif isinstance(a, ParkTrials):
                for _ in range(a.count):
                    self.ask(parked=True)
            elif isinstance(a, ReleaseParked):
                self.trials[a.trial] = dataclasses.replace(
                    self.trials[a.trial], state="WAITING", parked=False
                )
            elif isinstance(a, CreateJob):
                self.add_job(a.trial, a.attempt)
            elif isinstance(a, RelaunchAttempt):
                self.trials[a.trial] = dataclasses.replace(self.trials[a.trial], attempt=a.attempt)
                self.add_job(a.trial, a.attempt)
            elif isinstance(a, Tell):
                t = self.trials[a.trial]
                if t.state == "RUNNING":
                    self.trials[a.trial] = dataclasses.replace(
                        t, state=a.state, values=a.values, fail_reason=a.reason
                    )
            elif isinstance(a, VerifyJobGone):
                name = job_name("demo", a.trial, a.attempt)
                if name not in self.jobs and name not in self.lagging:
                    self.gone.add((a.trial, a.attempt))
            elif isinstance(a, DeleteJob):
                self.jobs.pop(a.name, None)
            elif isinstance(a, RecordUsage):
                self.usage[a.trial] = TrialUsage(a.attempts, a.gpu_seconds)
            elif isinstance(a, SuspendJob) and a.name in self.jobs:
                phase: JobPhase = "Suspended" if a.suspend else "Active"
                self.jobs[a.name] = dataclasses.replace(self.jobs[a.name], phase=phase)
        self.status = d.status
        running = {n for n, t in self.trials.items() if t.state == "RUNNING" and not t.parked}
        running |= {j.trial for j in self.jobs.values() if j.phase == "Active"}
        self.max_running_seen = max(self.max_running_seen, len(running))

    def step(self, **kw: Any) -> Decision:
        d = self.decide(**kw)
        self.apply(d)
        return d

    def finish(self, trial: int, phase: JobPhase = "Succeeded", **fields: Any) -> None:
        t = self.trials[trial]
        name = job_name("demo", trial, t.attempt)
        self.jobs[name] = dataclasses.replace(
            self.jobs[name], phase=phase, completion_time=self.now, **fields
        )

    def report(self, trial: int, state: TrialStateName, *values: float) -> None:
        """The report API finished the trial (Reporter mode)."""
        self.trials[trial] = dataclasses.replace(
            self.trials[trial], state=state, values=values or None
        )

    def running_jobs(self) -> list[str]:
        return sorted(n for n, j in self.jobs.items() if j.phase == "Active")


def of_type(d: Decision, kind: type[Any]) -> list[Any]:
    return [a for a in d.actions if isinstance(a, kind)]


def assert_settled(world: World) -> Decision:
    """Deciding again on the world the actions produced asks for nothing."""
    again = world.decide()
    assert again.actions == ()
    assert world.decide().status == again.status
    return again
