"""Trial Jobs read back: what the reconcile needs to know of a Job and its pods.

Pure functions only. The shell feeds what it observes through :func:`observe_job` into the
reconcile.

How a failed Job is classified (``backoffLimit: 0``, so the first failed pod fails the Job):

- The Job's ``podFailurePolicy`` has two ``FailJob`` rules, in this order:

  0. ``onPodConditions: [DisruptionTarget]`` — the pod was evicted, preempted, or its node
     was lost. Checked first because an evicted container also exits non-zero (137).
  1. ``onExitCodes: NotIn [0]`` on the trainer container — the user's code failed.

  Both fail the Job at once (no ``Ignore``: Kubernetes would otherwise retry on its own,
  uncounted); the Job's ``Failed`` condition then has reason ``PodFailurePolicy`` and a message
  naming the matching rule's index ("... matching FailJob rule at index 0"). Index 0 means
  *disruption* (the operator retries with the same parameters up to ``maxRetries``), index 1
  means *user error* (trial FAIL, no retry).
- Reason ``DeadlineExceeded``: ``activeDeadlineSeconds`` passed (trial FAIL).
- Any other failure (``BackoffLimitExceeded`` without a matching rule): a pod with a
  ``DisruptionTarget`` condition still counts as a disruption; everything else is a user error.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubetune.jobs import DISRUPTION_RULE_INDEX, LABEL_ATTEMPT, LABEL_STUDY, LABEL_TRIAL

__all__ = [
    "IMAGE_PULL_REASONS",
    "FailureKind",
    "JobPhase",
    "ObservedJob",
    "observe_job",
    "parse_termination_message",
    "parse_time",
    "slim_job",
    "slim_pod",
    "trial_label",
]

#: Container waiting reasons that mean the image will not come (retrying will not help).
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
_JOB_CONDITIONS = frozenset({"Complete", "Failed"})
_POD_CONDITIONS = frozenset({"PodScheduled", "DisruptionTarget"})
_KEPT_LABELS = frozenset({LABEL_STUDY, LABEL_TRIAL, LABEL_ATTEMPT, "job-name"})
_RULE_INDEX_RE = re.compile(r"rule at index (\d+)")
JobPhase = Literal["Active", "Suspended", "Succeeded", "Failed"]
FailureKind = Literal["Disruption", "UserError", "DeadlineExceeded"]


@dataclass(frozen=True)
class ObservedJob:
    """What the reconcile needs to know about one trial Job (and its pods)."""

    name: str
    trial: int
    attempt: int
    phase: JobPhase
    failure: FailureKind | None = None
    message: str = ""
    exit_code: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    termination_message: str | None = None
    #: Why the pod cannot start (``Unschedulable``, ``ErrImagePull``, ...), and since when.
    waiting_reason: str | None = None
    waiting_message: str = ""
    waiting_since: datetime | None = None
    deleting: bool = False
    log_tail: str | None = None
    #: When the trainer container of the Job's running pod started (None: no pod runs it).
    running_since: datetime | None = None


def parse_time(value: Any) -> datetime | None:
    """Parse an RFC 3339 timestamp as Kubernetes writes it; None when absent or malformed."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int_label(labels: Mapping[str, Any], key: str) -> int | None:
    raw = labels.get(key)
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def trial_label(obj: Mapping[str, Any]) -> int | None:
    """The trial number a Job's or Pod's ``kubetune.io/trial`` label names, if any."""
    return _int_label((obj.get("metadata") or {}).get("labels") or {}, LABEL_TRIAL)


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def _terminated(pod: Mapping[str, Any], container: str | None) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if not isinstance(cs, Mapping):
            continue
        if container is not None and cs.get("name") != container:
            continue
        term = (cs.get("state") or {}).get("terminated")
        if isinstance(term, Mapping):
            return term
    return None


def _running_since(pods: Sequence[Mapping[str, Any]], container: str | None) -> datetime | None:
    """The newest start of a running trainer container among the pods (a resumed Job's new
    pod, not the Job's first start)."""
    starts: list[datetime] = []
    for p in pods:
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            if not isinstance(cs, Mapping) or (
                container is not None and cs.get("name") != container
            ):
                continue
            running = (cs.get("state") or {}).get("running")
            started = parse_time(running.get("startedAt")) if isinstance(running, Mapping) else None
            if started is not None:
                starts.append(started)
    return max(starts, default=None)


def _trainer_name(job: Mapping[str, Any]) -> str | None:
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    for r in rules:
        name = (r.get("onExitCodes") or {}).get("containerName") if isinstance(r, Mapping) else None
        if isinstance(name, str):
            return name
    return None


def observe_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()
) -> ObservedJob | None:
    """Summarise a trial Job and its pods; None if it carries no trial labels."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    trial = _int_label(labels, LABEL_TRIAL)
    attempt = _int_label(labels, LABEL_ATTEMPT)
    if trial is None or attempt is None:
        return None
    name = str(meta.get("name", ""))
    status = job.get("status") or {}
    own_pods = [p for p in pods if _pod_of(p, name, trial, attempt)]
    trainer = _trainer_name(job)
    exit_code, termination = _trainer_exit(own_pods, trainer)
    failed = _condition(job, "Failed")
    complete = _condition(job, "Complete")
    phase, failure, message = _phase(job, failed, complete, own_pods)
    waiting = _waiting(own_pods) if phase == "Active" else (None, "", None)
    return ObservedJob(
        name=name,
        trial=trial,
        attempt=attempt,
        phase=phase,
        failure=failure,
        message=message,
        exit_code=exit_code,
        start_time=parse_time(status.get("startTime")),
        completion_time=parse_time(status.get("completionTime"))
        or parse_time((failed or complete or {}).get("lastTransitionTime")),
        termination_message=termination,
        waiting_reason=waiting[0],
        waiting_message=waiting[1],
        waiting_since=waiting[2],
        deleting=bool(meta.get("deletionTimestamp")),
        running_since=_running_since(own_pods, trainer) if phase == "Active" else None,
    )


def _pod_of(pod: Mapping[str, Any], job: str, trial: int, attempt: int) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get("job-name") == job:
        return True
    return _int_label(labels, LABEL_TRIAL) == trial and _int_label(labels, LABEL_ATTEMPT) == attempt


def _trainer_exit(
    pods: Sequence[Mapping[str, Any]], trainer: str | None
) -> tuple[int | None, str | None]:
    """The trainer container's exit code and termination message, where it terminated."""
    exit_code: int | None = None
    termination: str | None = None
    for p in pods:
        term = _terminated(p, trainer)
        if term is not None:
            if isinstance(term.get("exitCode"), int):
                exit_code = term["exitCode"]
            if isinstance(term.get("message"), str) and term["message"]:
                termination = term["message"]
    return exit_code, termination


def _phase(
    job: Mapping[str, Any],
    failed: Mapping[str, Any] | None,
    complete: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
) -> tuple[JobPhase, FailureKind | None, str]:
    """(phase, why it failed, the Job's failure message). Which podFailurePolicy rule fired
    tells a disruption (retry the attempt) from the trainer's own failure."""
    if complete is not None:
        return "Succeeded", None, ""
    if failed is not None:
        reason = str(failed.get("reason") or "")
        message = str(failed.get("message") or reason)
        match = _RULE_INDEX_RE.search(message)
        failure: FailureKind
        if reason == "DeadlineExceeded":
            failure = "DeadlineExceeded"
        elif reason == "PodFailurePolicy" and match is not None:
            index = int(match.group(1))
            failure = "Disruption" if index == DISRUPTION_RULE_INDEX else "UserError"
        elif any(_condition(p, "DisruptionTarget") for p in pods):
            failure = "Disruption"
        else:
            failure = "UserError"
        return "Failed", failure, message
    if (job.get("spec") or {}).get("suspend") is True:
        return "Suspended", None, ""
    return "Active", None, ""


def _waiting(pods: Sequence[Mapping[str, Any]]) -> tuple[str | None, str, datetime | None]:
    """Why an active Job's pod is not running yet (image pull, unschedulable), and since when."""
    reason: str | None = None
    message = ""
    since: datetime | None = None
    for p in pods:
        pstatus = p.get("status") or {}
        created = parse_time((p.get("metadata") or {}).get("creationTimestamp"))
        for cs in pstatus.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") if isinstance(cs, Mapping) else None
            if isinstance(waiting, Mapping) and waiting.get("reason") in IMAGE_PULL_REASONS:
                reason, message, since = (
                    str(waiting["reason"]),
                    str(waiting.get("message") or ""),
                    created,
                )
        for c in pstatus.get("conditions") or []:
            if (
                isinstance(c, Mapping)
                and c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
                and reason is None
            ):
                reason, message = "Unschedulable", str(c.get("message") or "")
                since = parse_time(c.get("lastTransitionTime")) or created
    return reason, message, since


def parse_termination_message(text: str | None, n_objectives: int) -> list[float] | str:
    """The values from ``{"values": [...]}``; a string saying what is wrong otherwise."""
    if not text:
        return "the container wrote no termination message"
    try:
        data = json.loads(text)
    except ValueError:
        return "the termination message is not JSON"
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, list):
        return 'the termination message has no "values" list'
    if len(values) != n_objectives:
        return f"the termination message has {len(values)} values, expected {n_objectives}"
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return f"the termination message has a value that is not a finite number: {v!r}"
        out.append(float(v))
    return out


# ---------------------------------------------------------------------------------------------
# What the indexes keep of each Job and Pod


def _interned(value: Any) -> Any:
    """One shared copy of a string that thousands of bodies repeat (label keys, condition
    types and reasons, timestamps of a burst): each parsed watch event brings its own."""
    return sys.intern(value) if isinstance(value, str) else value


def _pick(part: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The keys present, values interned except free text (messages)."""
    return {k: part[k] if k == "message" else _interned(part[k]) for k in keys if k in part}


def _slim_meta(meta: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    labels = meta.get("labels") or {}
    out = _pick(meta, keys)
    out["labels"] = {_interned(k): _interned(v) for k, v in labels.items() if k in _KEPT_LABELS}
    return out


def _slim_conditions(status: Mapping[str, Any], types: frozenset[str]) -> list[dict[str, Any]]:
    keys = ("type", "status", "reason", "message", "lastTransitionTime")
    return [
        _pick(c, keys)
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") in types
    ]


def slim_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Job that :func:`observe_job` reads (and ``ownerReferences`` uids), for
    kopf's index: finished Jobs stay there for ``ttlSecondsAfterFinished``, and a whole Job
    costs ~15 KiB of Python objects (benchmarks/README.md, scale). A field the decision
    starts to read must be kept here too (``tests/unit/test_observed_job.py`` compares)."""
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    status = job.get("status") or {}
    out_meta = _slim_meta(meta, ("name", "namespace", "deletionTimestamp"))
    owners = meta.get("ownerReferences") or []
    out_meta["ownerReferences"] = [{"uid": o.get("uid")} for o in owners if isinstance(o, Mapping)]
    out_spec = _pick(spec, ("suspend",))
    trainer = _trainer_name(job)
    if trainer is not None:
        out_spec["podFailurePolicy"] = {"rules": [{"onExitCodes": {"containerName": trainer}}]}
    out_status = _pick(status, ("startTime", "completionTime"))
    out_status["conditions"] = _slim_conditions(status, _JOB_CONDITIONS)
    return {"metadata": out_meta, "spec": out_spec, "status": out_status}


_STATE_KEYS = {
    "waiting": ("reason", "message"),
    "running": ("startedAt",),
    "terminated": ("exitCode", "message"),
}


def _slim_container(cs: Mapping[str, Any]) -> dict[str, Any]:
    state = cs.get("state") or {}
    kept = {
        kind: _pick(state[kind], keys)
        for kind, keys in _STATE_KEYS.items()
        if isinstance(state.get(kind), Mapping)
    }
    return {"name": _interned(cs.get("name")), "state": kept}


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a trial Pod that :func:`observe_job` reads, for kopf's index (the whole
    status, every condition and container field, is most of a Pod's ~20 KiB)."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    meta = _slim_meta(pod.get("metadata") or {}, ("name", "namespace", "creationTimestamp"))
    return {
        "metadata": meta,
        "status": {
            "conditions": _slim_conditions(status, _POD_CONDITIONS),
            "containerStatuses": [_slim_container(c) for c in statuses if isinstance(c, Mapping)],
        },
    }
