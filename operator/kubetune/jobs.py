"""Trial Jobs: rendering a batch/v1 Job for one trial attempt, its name and labels.

Pure functions only: no API calls, no clock. The shell creates what :func:`render_job` returns;
:mod:`kubetune.observed_job` reads Jobs back. The Job's ``podFailurePolicy`` has two ``FailJob``
rules, the disruption rule first (``DISRUPTION_RULE_INDEX``), then the trainer's non-zero exit.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kubetune._env import param_env

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = [
    "ANNOTATION_OPTUNA_STUDY",
    "DISRUPTION_RULE_INDEX",
    "LABEL_ATTEMPT",
    "LABEL_MANAGED_BY",
    "LABEL_QUEUE",
    "LABEL_STUDY",
    "LABEL_TRIAL",
    "MAX_NAME",
    "job_name",
    "render_job",
    "study_label",
]

LABEL_STUDY = "kubetune.io/study"
LABEL_TRIAL = "kubetune.io/trial"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_OPTUNA_STUDY = "kubetune.io/optuna-study"
MAX_NAME = 63
#: podFailurePolicy rule 0 matches disruptions; any other matching rule is the exit-code rule.
DISRUPTION_RULE_INDEX = 0
_MAX_LABEL_VALUE = 63


def job_name(study: str, trial: int, attempt: int) -> str:
    """``<study>-<trial>`` (``-r<attempt>`` for retries), hash-shortened to 63 characters.

    63 and not 253: the Job controller copies the name into the pod label ``job-name``.
    """
    suffix = f"-{trial}" + (f"-r{attempt}" if attempt else "")
    name = study + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(study.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    head = study[:keep].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def _label_value(value: str) -> str:
    if len(value) <= _MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return value[: _MAX_LABEL_VALUE - 9].rstrip("-._") + "-" + digest


def study_label(study: str) -> str:
    """The ``kubetune.io/study`` label value for a study name (hashed beyond 63 characters)."""
    return _label_value(study)


def _trainer_index(containers: Sequence[Mapping[str, Any]], wanted: str | None) -> int:
    if wanted is not None:
        for i, c in enumerate(containers):
            if c.get("name") == wanted:
                return i
    return 0


def _with_string_quantities(container: dict[str, Any]) -> dict[str, Any]:
    """Resource quantities as strings: YAML's ``nvidia.com/gpu: 1`` is an int, which the API
    server accepts but the typed ``kubernetes`` client refuses to send."""
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return container
    fixed: dict[str, Any] = dict(resources)
    for part in ("limits", "requests"):
        amounts = resources.get(part)
        if isinstance(amounts, Mapping):
            fixed[part] = {k: v if isinstance(v, str) else _quantity(v) for k, v in amounts.items()}
    container["resources"] = fixed
    return container


def _quantity(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def render_job(
    study_manifest_meta: Mapping[str, Any],
    spec: TuningStudySpec,
    trial_number: int,
    attempt: int,
    params: Mapping[str, Any],
    *,
    report_url: str | None,
    token: str | None,
    optuna_study_name: str,
) -> dict[str, Any]:
    """The Job for one attempt of one trial, deterministic in its inputs.

    ``study_manifest_meta`` is the TuningStudy's metadata (name, namespace, uid). The token is
    put into the environment only in Reporter mode; the storage URL never is.
    """
    study = str(study_manifest_meta["name"])
    namespace = study_manifest_meta.get("namespace")
    labels = {
        LABEL_STUDY: study_label(study),
        LABEL_TRIAL: str(trial_number),
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: "kubetune",
    }
    env: dict[str, str] = dict(param_env(dict(params)))
    env["KUBETUNE_NAMESPACE"] = str(namespace or "")
    env["KUBETUNE_STUDY"] = study
    env["KUBETUNE_TRIAL_NUMBER"] = str(trial_number)
    env["KUBETUNE_TRIAL_ATTEMPT"] = str(attempt)
    if spec.trial.result.from_ == "Reporter":
        if report_url:
            env["KUBETUNE_REPORT_URL"] = report_url
        if token:
            env["KUBETUNE_TRIAL_TOKEN"] = token
    template, trainer = _pod_template(spec, labels, env)
    job_spec = _job_spec(spec, template, trainer)
    job_labels = dict(labels)
    if spec.trial.queue_name:
        job_labels[LABEL_QUEUE] = spec.trial.queue_name
        job_spec["suspend"] = True
    owner = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "name": study,
        "uid": str(study_manifest_meta.get("uid") or ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    metadata: dict[str, Any] = {
        "name": job_name(study, trial_number, attempt),
        "labels": job_labels,
        "annotations": {ANNOTATION_OPTUNA_STUDY: optuna_study_name},
        "ownerReferences": [owner],
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _pod_template(
    spec: TuningStudySpec, labels: Mapping[str, str], env: Mapping[str, str]
) -> tuple[dict[str, Any], str]:
    """The user's pod template with our labels and env; returns it and the trainer's name."""
    template = copy.deepcopy(dict(spec.trial.template))
    tmeta = dict(template.get("metadata") or {})
    tmeta["labels"] = {**dict(tmeta.get("labels") or {}), **labels}
    template["metadata"] = tmeta
    pod = dict(template["spec"])
    pod["restartPolicy"] = "Never"
    containers = [_with_string_quantities(dict(c)) for c in pod["containers"]]
    trainer = _trainer_index(containers, spec.trial.container_name)
    ours = [{"name": k, "value": v} for k, v in env.items()]
    for i, c in enumerate(containers):
        # Ours come first so that the user's own env entries and `$(VAR)` in args can use them;
        # a user entry with one of our names is dropped (ours win).
        theirs = [e for e in (c.get("env") or []) if e.get("name") not in env]
        c["env"] = [dict(e) for e in ours] + theirs
        if i == trainer and spec.trial.result.from_ == "TerminationMessage":
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c["terminationMessagePolicy"] = "File"
    pod["containers"] = containers
    template["spec"] = pod
    return template, str(containers[trainer]["name"])


def _job_spec(spec: TuningStudySpec, template: dict[str, Any], trainer: str) -> dict[str, Any]:
    """One pod, no Job-level retries: a disruption or the trainer's non-zero exit fails the
    Job at once, and the operator decides (retry the attempt, or fail the trial)."""
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": trainer, "operator": "NotIn", "values": [0]},
                },
            ]
        },
        "template": template,
    }
    if spec.trial.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.trial.active_deadline_seconds
    if spec.trial.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.trial.ttl_seconds_after_finished
    return job_spec
