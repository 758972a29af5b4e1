"""The budget and the trial: what a trial Job runs, where its result comes from, its limits."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kubetune.spec._base import (
    MAX_HEARTBEAT_TIMEOUT_SECONDS,
    MAX_INT32,
    MAX_JSON_INT,
    MIN_HEARTBEAT_TIMEOUT_SECONDS,
    ResultSource,
    _Model,
)


class Budget(_Model):
    """Limits on the study; parallelism and every budget can be changed while it runs."""

    max_trials: int = Field(20, ge=1, le=100000, description="Trials to run in all.")
    parallelism: int = Field(1, ge=1, le=1000, description="Trials running at once.")
    max_failed_trials: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Mark the study Failed after this many failed trials; its running trials "
        "are stopped.",
    )
    deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_JSON_INT,
        description="End the study this many seconds after its start; running trials are stopped.",
    )
    max_gpu_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_JSON_INT,
        description="End the study once it has used this many GPU-seconds; running trials are "
        "stopped.",
    )
    ask_ahead: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Trials asked of the sampler before a slot frees, so that a free slot gets "
        "its next trial without waiting for an ask (at most parallelism; 0: ask only when a "
        "slot frees). Unset: parallelism (at most 16) for Random, QMC and Grid (their proposals "
        "ignore results), else one per 8 slots and none at parallelism 1 (a trial asked ahead "
        "misses the results that arrive while it waits).",
    )


class ResultSpec(_Model):
    """Where a trial's results come from."""

    from_: ResultSource = Field(
        "Reporter",
        alias="from",
        description="Reporter: the trainer calls the report API (intermediate values, "
        'pruning). TerminationMessage: the container writes {"values": [...]} to '
        "/dev/termination-log (any language, no pruning).",
    )


class TrialSpec(_Model):
    """How one trial runs: a Job built from a pod template."""

    max_retries: int = Field(
        2,
        ge=0,
        le=20,
        description="Retries with the same parameters after infrastructure failures "
        "(eviction, preemption, node loss); user errors are never retried.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_JSON_INT,
        description="A trial running longer than this fails with DeadlineExceeded.",
    )
    heartbeat_timeout_seconds: int | None = Field(
        None,
        ge=MIN_HEARTBEAT_TIMEOUT_SECONDS,
        le=MAX_HEARTBEAT_TIMEOUT_SECONDS,
        description="Reporter mode: a trial whose running trainer sent no report and no "
        "heartbeat for this long fails with HeartbeatTimeout and its Job is deleted, so a hung "
        "trainer frees its slot. Counted from the trainer container's start until the first "
        "heartbeat. Unset: no limit.",
    )
    ttl_seconds_after_finished: int | None = Field(
        3600, ge=0, le=MAX_INT32, description="Delete finished trial Jobs after this many seconds."
    )
    result: ResultSpec = Field(default_factory=ResultSpec, description="Where results come from.")
    queue_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="Kueue LocalQueue; Jobs are then created suspended and Kueue admits them.",
    )
    container_name: str | None = Field(
        None, max_length=63, description="The trainer container (default: the first one)."
    )
    template: dict[str, Any] = Field(
        description="A PodTemplateSpec for the trial's pod. The trainer container gets the "
        "parameters as environment variables; restartPolicy is set to Never.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("template")
    @classmethod
    def _has_containers(cls, v: dict[str, Any]) -> dict[str, Any]:
        pod = v.get("spec")
        if not isinstance(pod, dict):
            raise ValueError("template.spec is required (a PodSpec)")
        containers = pod.get("containers")
        if not isinstance(containers, list) or not containers:
            raise ValueError("template.spec.containers must list at least one container")
        for i, c in enumerate(containers):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
                raise ValueError(f"template.spec.containers[{i}] needs a name")
            if not isinstance(c.get("image"), str) or not c["image"]:
                raise ValueError(f"template.spec.containers[{i}] needs an image")
            for key in ("command", "args"):
                seq = c.get(key)
                if seq is not None and (
                    not isinstance(seq, list) or not all(isinstance(a, str) for a in seq)
                ):
                    raise ValueError(f"template.spec.containers[{i}].{key} must be strings")
        return v

    @model_validator(mode="after")
    def _container_exists(self) -> TrialSpec:
        if self.container_name is not None:
            names = [c["name"] for c in self.template["spec"]["containers"]]
            if self.container_name not in names:
                raise ValueError(f"containerName {self.container_name!r} is not in {names}")
        return self

    def trainer_container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.template["spec"]["containers"]
        if self.container_name is None:
            return containers[0]
        return next(c for c in containers if c["name"] == self.container_name)

    def gpus(self) -> float:
        """GPUs the trainer pod asks for (limits, else requests), for GPU-second accounting."""
        total = 0.0
        for c in self.template["spec"]["containers"]:
            res = c.get("resources") or {}
            for part in ("limits", "requests"):
                amounts = res.get(part) or {}
                gpu = {k: v for k, v in amounts.items() if k.endswith("/gpu")}
                if gpu:
                    total += sum(float(str(v)) for v in gpu.values())
                    break
        return total
