"""The reconcile decision: what should exist now, given the spec, the Jobs and the ledger.

:func:`decide` is pure (no I/O, no clock: ``now`` is passed in) and level-based: it recomputes
everything from the observed world, and applying its actions then deciding again yields no
further actions. The shell (``kubetune.study_loop``) observes, calls it, applies the actions.
It reads as a list of named steps, each a small pure function in a private module here:
classify the RUNNING trials (``_trials``), delete stale Jobs (``_trials``), account GPU time
(``_gpu``), find the stop rule and the free slots (``_budget``), then the study's state,
conditions and Events (``_study``).

Rules (each tested in tests/unit/test_reconcile.py):

- Slots: a trial occupies a slot while it is RUNNING in the ledger or has an active Job (a Job
  created but not yet seen by the watch, passed in as ``expected``, counts as active);
  ``parallelism`` is never exceeded, and ``maxTrials`` counts every launched trial.
- Ask-ahead (``_ahead``): up to ``ask_ahead(spec)`` trials are asked before a slot frees and
  parked (no Job, no slot); a free slot takes the oldest parked trial first. Parked trials
  are never failed, only released back to WAITING when the study stops launching or its room
  shrinks.
- A RUNNING trial whose current attempt has no Job: if the Job was never confirmed created
  (``job_created < attempt``: the operator crashed between ask and create) it is created now;
  if it was created and is gone (deleted by hand, or its TTL ran out while the operator was
  away), the attempt counts as an infrastructure failure: retried with the same parameters
  while attempts are left, else the trial fails with ``JobDeleted``. "Gone" means a direct
  read of the Job answered 404 (``gone``, after a ``VerifyJobGone`` action): a Job merely
  missing from a lagging watch is not relaunched, so no trial runs twice.
- A failed Job: disruption (eviction, preemption, node loss) → retry while ``attempt <
  maxRetries`` else FAIL ``RetriesExhausted``; exit code ≠ 0 → FAIL ``ExitCode`` (message with
  the exit code and the log tail); ``DeadlineExceeded`` → FAIL.
- A Job that succeeded: TerminationMessage mode → the values from the termination message
  (FAIL ``NoResult`` when missing or malformed); Reporter mode → the trial should already be
  finished through the report API; if it is still RUNNING the trainer never called
  ``complete`` → FAIL ``NoResult``.
- ``trial.heartbeatTimeoutSeconds`` (Reporter mode): a trial whose trainer container runs and
  whose last sign of life (the newest of ``kubetune:heartbeat``, that container's start and
  the report API's start, ``reports_since``: an operator that was down heard nothing) is
  older than the timeout → FAIL ``HeartbeatTimeout`` and its Job is deleted; otherwise the
  decision asks to be run again when it would expire. Pending, pulling or suspended pods are
  not judged.
- Pods that cannot start: ``PodsHealthy=False`` (``Unschedulable`` or ``ImagePullFailed``);
  image pull errors fail the trial after ``image_pull_grace_seconds``.
- No new trials while suspended, invalid (immutable fields changed), failed
  (``maxFailedTrials``), past the deadline, over the GPU budget, at ``maxTrials`` or at the
  end of a Grid (``grid_trials``, reason ``SearchSpaceExhausted``).
- A complete trial that reaches every ``objectives[].goal`` given ends the study first of all
  (``GoalReached``, Succeeded).
- A stop that halts (the goal, ``maxFailedTrials``, deadline, GPU budget) also ends the running
  trials at once: their GPU time is settled, they FAIL with ``StudyStopped``, their Jobs are
  deleted and one ``TrialsStopped`` Event says so. At ``maxTrials`` and a Grid's end the
  running trials finish first. The study is Succeeded (or Failed, on ``maxFailedTrials`` or
  when no trial completed) once it stops launching and nothing runs.
- ``spec.suspend: true`` sets ``spec.suspend`` on the running trials' Jobs (their pods go,
  the Jobs keep their slots), ``false`` clears it again; not for Kueue-queued studies, whose
  Jobs' ``spec.suspend`` belongs to Kueue.
- Every trial outcome is announced by one rule (``_events.outcome_event``): told here, or
  told by the trainer through the report API (``reported_outcome_event``, posted by the
  shell). Per study and per-trial reason the first ``DEFAULT_EVENTS_PER_REASON`` Events are
  posted one by one, later ones fold into one aggregate Event (:class:`EventBudget`).
- A pass that raises is not the decision's: the shell sets ``Reconciled=False`` (reason
  ``ReconcileError``, :func:`reconcile_error_status`, message by :func:`describe_error`), posts
  a Warning Event and tries again after :func:`reconcile_backoff` (2 s doubling to 5 min).
"""

from __future__ import annotations

from kubetune.reconcile._actions import (
    Action,
    CreateJob,
    Decision,
    DeleteJob,
    EventSpec,
    LaunchParked,
    LaunchTrials,
    ParkTrials,
    RecordUsage,
    RelaunchAttempt,
    ReleaseParked,
    SuspendJob,
    Tell,
    VerifyJobGone,
)
from kubetune.reconcile._budget import Goal, goal_reached
from kubetune.reconcile._decide import (
    DEFAULT_IMAGE_PULL_GRACE_SECONDS,
    decide,
    spec_changed,
    spec_hash,
)
from kubetune.reconcile._events import (
    AGGREGATED_REASONS,
    COMBINED_PREFIX,
    DEFAULT_EVENTS_PER_REASON,
    EventBudget,
    FoldEvent,
    PostEvent,
    aggregate_event_name,
    outcome_event,
    reported_outcome_event,
)
from kubetune.reconcile._observed import ExpectedJob
from kubetune.reconcile._study import (
    describe_error,
    reconcile_backoff,
    reconcile_error_status,
    redact,
    storage_error_status,
)
from kubetune.reconcile._trials import MAX_LOG_TAIL_CHARS

__all__ = [
    "AGGREGATED_REASONS",
    "COMBINED_PREFIX",
    "DEFAULT_EVENTS_PER_REASON",
    "DEFAULT_IMAGE_PULL_GRACE_SECONDS",
    "MAX_LOG_TAIL_CHARS",
    "Action",
    "CreateJob",
    "Decision",
    "DeleteJob",
    "EventBudget",
    "EventSpec",
    "ExpectedJob",
    "FoldEvent",
    "Goal",
    "LaunchParked",
    "LaunchTrials",
    "ParkTrials",
    "PostEvent",
    "RecordUsage",
    "RelaunchAttempt",
    "ReleaseParked",
    "SuspendJob",
    "Tell",
    "VerifyJobGone",
    "aggregate_event_name",
    "decide",
    "describe_error",
    "goal_reached",
    "outcome_event",
    "reconcile_backoff",
    "reconcile_error_status",
    "redact",
    "reported_outcome_event",
    "spec_changed",
    "spec_hash",
    "storage_error_status",
]
