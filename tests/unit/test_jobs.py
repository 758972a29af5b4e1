"""Trial Job rendering and reading Jobs back (pure)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubetune.jobs import (
    LABEL_ATTEMPT,
    LABEL_QUEUE,
    LABEL_STUDY,
    LABEL_TRIAL,
    MAX_NAME,
    job_name,
    render_job,
)
from kubetune.observed_job import observe_job, parse_termination_message
from kubetune.spec import TuningStudySpec, parse_manifest

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
META = {"name": "digits", "namespace": "ml", "uid": "uid-123"}


def make_spec(**trial: Any) -> TuningStudySpec:
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "digits"},
        "spec": {
            "objectives": [{"name": "acc", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}},
                {"name": "batch-size", "categorical": {"choices": [32, 64]}},
                {"name": "opt", "categorical": {"choices": ["sgd", "adamw"]}},
            ],
            "trial": {
                "template": {
                    "metadata": {"labels": {"team": "vision"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "trainer",
                                "image": "trainer:1",
                                "args": ["--lr=$(KUBETUNE_PARAM_LR)"],
                                "env": [
                                    {"name": "USER_VAR", "value": "x"},
                                    {"name": "KUBETUNE_STUDY", "value": "spoofed"},
                                ],
                                "resources": {"limits": {"nvidia.com/gpu": 2}},
                            },
                            {"name": "sidecar", "image": "busybox"},
                        ]
                    },
                },
                **trial,
            },
        },
    }
    return parse_manifest(manifest).spec


PARAMS = {"lr": 0.01, "batch-size": 64, "opt": "sgd"}


def render(spec: TuningStudySpec | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "report_url": "http://kubetune.kubetune.svc:8082",
        "token": "0.secret-token",
        "optuna_study_name": "ml.digits.uid-123",
    }
    args.update(kw)
    return render_job(META, spec or make_spec(), 7, 0, PARAMS, **args)


def env_of(job: dict[str, Any], container: int = 0) -> dict[str, str]:
    entries = job["spec"]["template"]["spec"]["containers"][container]["env"]
    return {e["name"]: e.get("value", "") for e in entries}


def test_name_is_study_dash_trial_and_attempt_suffix() -> None:
    assert job_name("digits", 7, 0) == "digits-7"
    assert job_name("digits", 7, 2) == "digits-7-r2"


@pytest.mark.parametrize("length", [40, 55, 56, 57, 62, 63, 100, 253])
@pytest.mark.parametrize("attempt", [0, 3, 20])
def test_long_names_are_shortened_with_a_hash(length: int, attempt: int) -> None:
    study = ("a" * (length - 1)) + "b"
    name = job_name(study, 123456, attempt)
    assert len(name) <= MAX_NAME
    assert DNS1123_LABEL.match(name)
    assert name.endswith(f"-123456-r{attempt}" if attempt else "-123456")
    # Different long names do not collide, and the result is deterministic.
    other = job_name(("a" * (length - 1)) + "c", 123456, attempt)
    assert name == job_name(study, 123456, attempt)
    if length + 7 > MAX_NAME:
        assert name != other


def test_job_labels_owner_and_failure_rules() -> None:
    job = render()
    meta = job["metadata"]
    assert meta["name"] == "digits-7"
    assert meta["namespace"] == "ml"
    assert meta["labels"] == {
        LABEL_STUDY: "digits",
        LABEL_TRIAL: "7",
        LABEL_ATTEMPT: "0",
        "app.kubernetes.io/managed-by": "kubetune",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "TuningStudy",
            "name": "digits",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert "activeDeadlineSeconds" not in spec
    assert "suspend" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    # Disruption first: an evicted container also exits non-zero.
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "NotIn",
        "values": [0],
    }
    pod = spec["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["team"] == "vision"
    assert pod["metadata"]["labels"][LABEL_TRIAL] == "7"
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "2"}  # sent as a quantity string


def test_env_carries_params_and_reporter_token_but_never_storage() -> None:
    job = render()
    env = env_of(job)
    assert env["KUBETUNE_PARAM_LR"] == "0.01"
    assert env["KUBETUNE_PARAM_BATCH_SIZE"] == "64"
    assert env["KUBETUNE_PARAM_OPT"] == "sgd"
    assert json.loads(env["KUBETUNE_PARAMS"]) == PARAMS
    assert env["KUBETUNE_STUDY"] == "digits"  # the user's spoofed value is dropped
    assert env["KUBETUNE_NAMESPACE"] == "ml"
    assert env["KUBETUNE_TRIAL_NUMBER"] == "7"
    assert env["KUBETUNE_TRIAL_ATTEMPT"] == "0"
    assert env["KUBETUNE_REPORT_URL"] == "http://kubetune.kubetune.svc:8082"
    assert env["KUBETUNE_TRIAL_TOKEN"] == "0.secret-token"
    assert env["USER_VAR"] == "x"
    names = [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    # Ours come before the user's, so `$(KUBETUNE_PARAM_LR)` resolves in their entries too.
    assert names.index("KUBETUNE_PARAM_LR") < names.index("USER_VAR")
    assert names.count("KUBETUNE_STUDY") == 1
    text = json.dumps(job)
    assert "postgres" not in text.lower() and "STORAGE" not in text


def test_termination_message_mode_has_no_token_and_uses_file_policy() -> None:
    spec = make_spec(result={"from": "TerminationMessage"})
    job = render(spec)
    env = env_of(job)
    assert "KUBETUNE_TRIAL_TOKEN" not in env
    assert "KUBETUNE_REPORT_URL" not in env
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    assert trainer["terminationMessagePolicy"] == "File"


def test_retry_attempt_queue_deadline_and_container_name() -> None:
    spec = make_spec(
        queueName="gpu-queue",
        activeDeadlineSeconds=900,
        ttlSecondsAfterFinished=60,
        containerName="sidecar",
    )
    job = render_job(META, spec, 3, 2, PARAMS, report_url=None, token=None, optuna_study_name="s")
    assert job["metadata"]["name"] == "digits-3-r2"
    assert job["metadata"]["labels"][LABEL_QUEUE] == "gpu-queue"
    assert job["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    assert job["spec"]["suspend"] is True
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    rule = job["spec"]["podFailurePolicy"]["rules"][1]
    assert rule["onExitCodes"]["containerName"] == "sidecar"
    assert env_of(job, 1)["KUBETUNE_TRIAL_ATTEMPT"] == "2"


def test_render_is_deterministic_and_does_not_mutate_the_spec() -> None:
    spec = make_spec()
    before = spec.model_dump()
    assert render(spec) == render(spec)
    assert spec.model_dump() == before


# --- observe_job --------------------------------------------------------------------------


def _job(status: dict[str, Any], *, trial: int = 4, attempt: int = 0) -> dict[str, Any]:
    job = render_job(
        META,
        make_spec(),
        trial,
        attempt,
        PARAMS,
        report_url=None,
        token=None,
        optuna_study_name="s",
    )
    job["status"] = status
    return job


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-abcde",
            "labels": {"job-name": name},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": status,
    }


def test_observe_active_and_complete_jobs() -> None:
    active = observe_job(_job({"active": 1, "startTime": "2026-01-01T00:00:00Z"}))
    assert active is not None
    assert (active.trial, active.attempt, active.phase) == (4, 0, "Active")
    assert active.start_time is not None
    done = observe_job(
        _job(
            {
                "startTime": "2026-01-01T00:00:00Z",
                "completionTime": "2026-01-01T00:01:40Z",
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        ),
        [
            _pod(
                "digits-4",
                containerStatuses=[
                    {
                        "name": "trainer",
                        "state": {"terminated": {"exitCode": 0, "message": '{"values": [0.9]}'}},
                    }
                ],
            )
        ],
    )
    assert done is not None and done.phase == "Succeeded"
    assert done.termination_message == '{"values": [0.9]}'
    assert done.start_time is not None and done.completion_time is not None
    assert (done.completion_time - done.start_time).total_seconds() == 100


@pytest.mark.parametrize(
    ("reason", "message", "pod_conditions", "expected"),
    [
        (
            "PodFailurePolicy",
            "Pod ml/digits-4-x has condition DisruptionTarget matching FailJob rule at index 0",
            [],
            "Disruption",
        ),
        (
            "PodFailurePolicy",
            "Container trainer for pod ml/digits-4-x failed with exit code 3 matching "
            "FailJob rule at index 1",
            [],
            "UserError",
        ),
        (
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            [],
            "DeadlineExceeded",
        ),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", [], "UserError"),
        (
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            [{"type": "DisruptionTarget", "status": "True"}],
            "Disruption",
        ),
    ],
)
def test_failed_jobs_are_classified(
    reason: str, message: str, pod_conditions: list[dict[str, str]], expected: str
) -> None:
    job = _job(
        {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]}
    )
    pod = _pod(
        "digits-4",
        conditions=pod_conditions,
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 3}}}],
    )
    observed = observe_job(job, [pod])
    assert observed is not None
    assert observed.phase == "Failed"
    assert observed.failure == expected
    assert observed.exit_code == 3


def test_waiting_pods_are_reported() -> None:
    pull = _pod(
        "digits-4",
        containerStatuses=[
            {"name": "trainer", "state": {"waiting": {"reason": "ErrImagePull", "message": "nope"}}}
        ],
    )
    observed = observe_job(_job({"active": 1}), [pull])
    assert observed is not None
    assert observed.waiting_reason == "ErrImagePull"
    assert observed.waiting_message == "nope"
    assert observed.waiting_since is not None
    unsched = _pod(
        "digits-4",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes have GPUs",
                "lastTransitionTime": "2026-01-01T00:00:05Z",
            }
        ],
    )
    observed = observe_job(_job({"active": 1}), [unsched])
    assert observed is not None and observed.waiting_reason == "Unschedulable"
    # Pods of another Job are not mixed in.
    assert observe_job(_job({"active": 1}), [_pod("digits-5", **pull["status"])]) is not None
    other = observe_job(_job({"active": 1}), [_pod("digits-5", **pull["status"])])
    assert other is not None and other.waiting_reason is None


def test_suspended_and_unlabelled_jobs() -> None:
    job = _job({})
    job["spec"]["suspend"] = True
    observed = observe_job(job)
    assert observed is not None and observed.phase == "Suspended"
    assert observe_job({"metadata": {"name": "x", "labels": {}}}) is None
    assert observe_job({"metadata": {"name": "x", "labels": {LABEL_TRIAL: "a"}}}) is None


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"values": [0.5]}', True),
        ('{"values": [1]}', True),
        (None, False),
        ("", False),
        ("not json", False),
        ('{"value": 0.5}', False),
        ('{"values": [0.5, 0.1]}', False),
        ('{"values": ["0.5"]}', False),
        ('{"values": [NaN]}', False),
        ('{"values": [Infinity]}', False),
        ('{"values": [true]}', False),
        ("[1]", False),
    ],
)
def test_termination_message_parsing(text: str | None, ok: bool) -> None:
    result = parse_termination_message(text, 1)
    assert isinstance(result, list) == ok
    if not ok:
        assert isinstance(result, str) and result


def test_numeric_resource_quantities_are_sent_as_strings() -> None:
    """`nvidia.com/gpu: 1` in YAML is an int; the kubernetes client refuses non-string
    quantities, which once kept a GPU study from launching any trial."""
    from kubetune.spec import load_manifest

    ts = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "gpu-cnn-study.yaml")
    job = render_job(
        ts.metadata.model_dump(exclude_none=True),
        ts.spec,
        0,
        0,
        {"lr": 0.1},
        report_url="http://r",
        token="t",
        optuna_study_name="s",
    )
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "1", "memory": "16Gi"}
    # The template the user wrote is left as it was.
    assert (
        ts.spec.trial.template["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == 1
    )


def test_running_since_is_the_newest_running_trainer_start() -> None:
    """The heartbeat timeout counts from here: a resumed Job's new pod, not the Job's start."""
    old = _pod(
        "digits-4",
        containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}],
    )
    new = _pod(
        "digits-4",
        containerStatuses=[
            {"name": "sidecar", "state": {"running": {"startedAt": "2026-01-01T01:00:00Z"}}},
            {"name": "trainer", "state": {"running": {"startedAt": "2026-01-01T00:30:00Z"}}},
        ],
    )
    observed = observe_job(_job({"active": 1, "startTime": "2026-01-01T00:00:00Z"}), [old, new])
    assert observed is not None
    assert observed.running_since == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    pending = observe_job(_job({"active": 1}), [_pod("digits-4")])
    assert pending is not None and pending.running_since is None
