"""Condition types, condition reasons, Event reasons and trial fail reasons, kept in one place.

Reasons are CamelCase constants (Kubernetes API conventions) and each constant is named after
its value; tests, docs and dashboards refer to the values, so change them only together with
their users.
"""

from __future__ import annotations

__all__ = [
    "ASK_INTERRUPTED",
    "COND_FAILED",
    "COND_INVALID",
    "COND_PODS_HEALTHY",
    "COND_READY",
    "COND_RECONCILED",
    "COND_RUNNING",
    "COND_STORAGE_REACHABLE",
    "COND_SUCCEEDED",
    "COND_SUSPENDED",
    "DEADLINE_EXCEEDED",
    "DEADLINE_REACHED",
    "EXIT_CODE",
    "GOAL_REACHED",
    "GPU_BUDGET_EXHAUSTED",
    "HEARTBEAT_TIMEOUT",
    "IMAGE_PULL_FAILED",
    "IMMUTABLE_FIELD_CHANGED",
    "INVALID_SPEC",
    "JOB_DELETED",
    "JOB_FAILED",
    "JOB_REJECTED",
    "MAX_FAILED_TRIALS_REACHED",
    "MAX_TRIALS_REACHED",
    "NOT_SUSPENDED",
    "NO_RESULT",
    "PODS_HEALTHY",
    "RECONCILE_ERROR",
    "RECONCILE_SUCCEEDED",
    "RETRIES_EXHAUSTED",
    "SAMPLER_UNAVAILABLE",
    "SEARCH_SPACE_EXHAUSTED",
    "SPEC_VALID",
    "STORAGE_ERROR",
    "STORAGE_REACHABLE",
    "STUDY_DELETED",
    "STUDY_FAILED",
    "STUDY_STARTED",
    "STUDY_STOPPED",
    "STUDY_SUCCEEDED",
    "STUDY_SUSPENDED",
    "TRIALS_IN_PROGRESS",
    "TRIALS_RUNNING",
    "TRIALS_STOPPED",
    "TRIAL_COMPLETED",
    "TRIAL_FAILED",
    "TRIAL_LAUNCHED",
    "TRIAL_PRUNED",
    "TRIAL_RETRIED",
    "UNSCHEDULABLE",
    "WAITING_FOR_TRIALS",
]

# Condition types (adjectives or past tense).
COND_READY = "Ready"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_INVALID = "Invalid"
COND_SUSPENDED = "Suspended"
COND_STORAGE_REACHABLE = "StorageReachable"
#: False while some trial pods are stuck (unschedulable, image cannot be pulled).
COND_PODS_HEALTHY = "PodsHealthy"
#: False while reconciling the study raises (the operator backs off and tries again).
COND_RECONCILED = "Reconciled"

# Condition reasons (the study's own reason is also the ``Ready`` condition's).
TRIALS_RUNNING = "TrialsRunning"
#: ``Succeeded`` and ``Failed`` while the study has not ended.
TRIALS_IN_PROGRESS = "TrialsInProgress"
#: ``Pending``: no trial launched yet.
WAITING_FOR_TRIALS = "WaitingForTrials"
STUDY_SUSPENDED = "StudySuspended"
#: ``Suspended`` is False: ``spec.suspend`` is not set.
NOT_SUSPENDED = "NotSuspended"
MAX_TRIALS_REACHED = "MaxTrialsReached"
#: A complete trial reached every ``objectives[].goal`` given.
GOAL_REACHED = "GoalReached"
MAX_FAILED_TRIALS_REACHED = "MaxFailedTrialsReached"
DEADLINE_REACHED = "DeadlineReached"
GPU_BUDGET_EXHAUSTED = "GpuBudgetExhausted"
#: A Grid study tried every point (``maxTrials`` was larger than the grid).
SEARCH_SPACE_EXHAUSTED = "SearchSpaceExhausted"
INVALID_SPEC = "InvalidSpec"
IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
SPEC_VALID = "SpecValid"
STORAGE_REACHABLE = "StorageReachable"
STORAGE_ERROR = "StorageError"
PODS_HEALTHY = "PodsHealthy"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
#: ``Reconciled``: the last pass went through / raised (also the Warning Event's reason).
RECONCILE_SUCCEEDED = "ReconcileSucceeded"
RECONCILE_ERROR = "ReconcileError"
#: ``Invalid``: the sampler cannot be built where the study runs (GP without PyTorch).
SAMPLER_UNAVAILABLE = "SamplerUnavailable"

# Event reasons for the study (besides InvalidSpec, ImmutableFieldChanged, StudySuspended).
STUDY_STARTED = "StudyStarted"
STUDY_SUCCEEDED = "StudySucceeded"
STUDY_FAILED = "StudyFailed"

# Event reasons for trials.
TRIAL_LAUNCHED = "TrialLaunched"
TRIAL_RETRIED = "TrialRetried"
TRIAL_COMPLETED = "TrialCompleted"
TRIAL_PRUNED = "TrialPruned"
TRIAL_FAILED = "TrialFailed"
#: The study stopped (a budget rule or its goal) and ended its running trials.
TRIALS_STOPPED = "TrialsStopped"

# Trial fail reasons (stored in the ledger as ``kubetune:fail_reason``; also ImagePullFailed).
EXIT_CODE = "ExitCode"
DEADLINE_EXCEEDED = "DeadlineExceeded"
#: A running Reporter-mode trainer was silent (no report, no heartbeat) past
#: ``trial.heartbeatTimeoutSeconds``.
HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
RETRIES_EXHAUSTED = "RetriesExhausted"
JOB_DELETED = "JobDeleted"
JOB_FAILED = "JobFailed"
NO_RESULT = "NoResult"
ASK_INTERRUPTED = "AskInterrupted"
JOB_REJECTED = "JobRejected"
STUDY_DELETED = "StudyDeleted"
#: A running trial ended because its study stopped (also the reason its Job is deleted).
STUDY_STOPPED = "StudyStopped"
