"""Condition types, condition reasons, Event reasons and trial fail reasons, kept in one place.

Reasons are CamelCase constants (Kubernetes API conventions); tests, docs and dashboards refer
to these names, so change them only together with their users.
"""

from __future__ import annotations

__all__ = [
    "ASK_INTERRUPTED",
    "COND_FAILED",
    "COND_INVALID",
    "COND_PODS_HEALTHY",
    "COND_READY",
    "COND_RUNNING",
    "COND_STORAGE_REACHABLE",
    "COND_SUCCEEDED",
    "COND_SUSPENDED",
    "DEADLINE_EXCEEDED",
    "DEADLINE_REACHED",
    "EXIT_CODE",
    "GPU_BUDGET_EXHAUSTED",
    "IMAGE_PULL_FAILED",
    "IMMUTABLE_FIELD_CHANGED",
    "INVALID_SPEC",
    "JOB_DELETED",
    "JOB_FAILED",
    "JOB_REJECTED",
    "MAX_FAILED_TRIALS_REACHED",
    "MAX_TRIALS_REACHED",
    "NO_RESULT",
    "PODS_OK",
    "RETRIES_EXHAUSTED",
    "SPEC_VALID",
    "STORAGE_ERROR",
    "STORAGE_OK",
    "STUDY_DELETED",
    "STUDY_FAILED",
    "STUDY_RUNNING",
    "STUDY_STARTED",
    "STUDY_SUCCEEDED",
    "STUDY_SUSPENDED",
    "TRIALS_IN_PROGRESS",
    "TRIAL_COMPLETED",
    "TRIAL_FAILED",
    "TRIAL_LAUNCHED",
    "TRIAL_PRUNED",
    "TRIAL_RETRIED",
    "UNSCHEDULABLE",
    "WAITING_FOR_SLOTS",
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

# Condition reasons for the study.
STUDY_STARTED = "StudyStarted"
STUDY_RUNNING = "TrialsRunning"
TRIALS_IN_PROGRESS = "TrialsInProgress"
WAITING_FOR_SLOTS = "WaitingForTrials"
STUDY_SUSPENDED = "StudySuspended"
STUDY_SUCCEEDED = "StudySucceeded"
STUDY_FAILED = "StudyFailed"
STUDY_DELETED = "StudyDeleted"
MAX_TRIALS_REACHED = "MaxTrialsReached"
MAX_FAILED_TRIALS_REACHED = "MaxFailedTrialsReached"
DEADLINE_REACHED = "DeadlineReached"
GPU_BUDGET_EXHAUSTED = "GpuBudgetExhausted"
INVALID_SPEC = "InvalidSpec"
IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
SPEC_VALID = "SpecValid"
STORAGE_OK = "StorageReachable"
STORAGE_ERROR = "StorageError"
PODS_OK = "PodsHealthy"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"

# Event reasons for trials.
TRIAL_LAUNCHED = "TrialLaunched"
TRIAL_RETRIED = "TrialRetried"
TRIAL_COMPLETED = "TrialCompleted"
TRIAL_PRUNED = "TrialPruned"
TRIAL_FAILED = "TrialFailed"

# Trial fail reasons (stored in the ledger as ``kubetune:fail_reason``).
EXIT_CODE = "ExitCode"
DEADLINE_EXCEEDED = "DeadlineExceeded"
RETRIES_EXHAUSTED = "RetriesExhausted"
JOB_DELETED = "JobDeleted"
JOB_FAILED = "JobFailed"
NO_RESULT = "NoResult"
ASK_INTERRUPTED = "AskInterrupted"
JOB_REJECTED = "JobRejected"
