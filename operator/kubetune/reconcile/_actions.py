"""What the decision hands the shell: actions to apply, Events to post, and the Decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.status import StudyState

__all__ = [
    "Action",
    "CreateJob",
    "Decision",
    "DeleteJob",
    "EventSpec",
    "LaunchParked",
    "LaunchTrials",
    "ParkTrials",
    "RecordUsage",
    "RelaunchAttempt",
    "ReleaseParked",
    "SuspendJob",
    "Tell",
    "VerifyJobGone",
]


@dataclass(frozen=True)
class LaunchTrials:
    """Ask Optuna ``count`` times and create a Job for each new trial (attempt 0)."""

    count: int


@dataclass(frozen=True)
class LaunchParked:
    """Create the Job of a parked trial (asked ahead, attempt 0): a launch with no ask."""

    trial: int
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ParkTrials:
    """Ask Optuna ``count`` times and park the new trials (no Job) for the next free slots."""

    count: int


@dataclass(frozen=True)
class ReleaseParked:
    """Return a parked trial to WAITING: Optuna's next ask runs its parameters."""

    trial: int


@dataclass(frozen=True)
class CreateJob:
    """Create the missing Job of a RUNNING trial's current attempt (no ledger change)."""

    trial: int
    attempt: int
    params: Mapping[str, Any]


@dataclass(frozen=True)
class RelaunchAttempt:
    """Set the trial's attempt to ``attempt`` in the ledger, then create its Job."""

    trial: int
    attempt: int
    params: Mapping[str, Any]
    reason: str


@dataclass(frozen=True)
class VerifyJobGone:
    """Read the Job of the trial's current attempt from the API server (not the watch).

    The watch can lag by minutes under load, so a Job missing from it may still exist: a trial
    is relaunched (``JobDeleted``) only once a direct read answered 404, which the shell passes
    back to :func:`decide` as ``gone``. Until then the trial keeps its slot and nothing runs.
    """

    trial: int
    attempt: int


@dataclass(frozen=True)
class Tell:
    """Finish a RUNNING trial in the ledger."""

    trial: int
    state: Literal["COMPLETE", "FAIL"]
    values: tuple[float, ...] | None = None
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str


@dataclass(frozen=True)
class SuspendJob:
    """Set the Job's ``spec.suspend``: True deletes its pods and keeps the Job, False runs it
    again (from the start: the trainer restarts in a new pod, same attempt and token)."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class RecordUsage:
    """Store the GPU-seconds settled for a trial (absolute values, so repeating is harmless)."""

    trial: int
    attempts: int
    gpu_seconds: float
    #: For a pruned trial, its share of ``status.gpuSeconds.savedByPruning`` as this
    #: settlement leaves it (``status.pruning_savings``); the shell counts it into the metrics,
    #: the ledger does not store it (the status recomputes it every pass).
    saved_by_pruning: float = 0.0


Action = (
    LaunchTrials
    | LaunchParked
    | ParkTrials
    | ReleaseParked
    | CreateJob
    | RelaunchAttempt
    | VerifyJobGone
    | Tell
    | DeleteJob
    | RecordUsage
    | SuspendJob
)


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do now. Both shells (the operator, ``kubetune run``) apply it in one order:
    :attr:`parked_launches` first (their parameters are stored: nothing waits for them),
    :attr:`usage` in one ledger write, then :attr:`steps` in order (a trial's tell comes before
    the Job write it justifies), then :attr:`launches` (a new trial is asked only once every
    finished one was told, so the sampler sees all results), and :attr:`park` last, once the
    study's status is written (asking ahead is off the launch path)."""

    actions: tuple[Action, ...]
    status: dict[str, Any]
    events: tuple[EventSpec, ...] = ()
    #: Reconcile again after this many seconds at the latest (deadlines, grace periods).
    requeue_after: float | None = None
    state: StudyState = "Pending"
    #: Trials holding a slot once the actions are applied (launches included).
    occupied: int = 0

    @property
    def parked_launches(self) -> tuple[LaunchParked, ...]:
        return tuple(a for a in self.actions if isinstance(a, LaunchParked))

    @property
    def usage(self) -> tuple[RecordUsage, ...]:
        return tuple(a for a in self.actions if isinstance(a, RecordUsage))

    @property
    def steps(self) -> tuple[Action, ...]:
        """Every action but usage records, launches and parking, in the decision's order."""
        later = RecordUsage | LaunchTrials | LaunchParked | ParkTrials
        return tuple(a for a in self.actions if not isinstance(a, later))

    @property
    def launches(self) -> int:
        return sum(a.count for a in self.actions if isinstance(a, LaunchTrials))

    @property
    def park(self) -> int:
        return sum(a.count for a in self.actions if isinstance(a, ParkTrials))
