"""``TuningStudy.status`` and the whole object as the API stores it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from kubetune.spec._base import OBJECT_NAME_RE, _Model
from kubetune.spec._study import TuningStudySpec


class ObjectMeta(BaseModel):
    """The subset of metav1.ObjectMeta kubetune reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(None, max_length=63)
    uid: str | None = None
    generation: int | None = None

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if not OBJECT_NAME_RE.match(v):
            raise ValueError(
                "must be a lowercase DNS-1123 name (a-z, 0-9, '-', starting and ending "
                "with a letter or digit)"
            )
        return v


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(description="Running, Succeeded, Failed, Invalid, Suspended, ...")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="A CamelCase reason code.")
    message: str = Field("", description="A human-readable explanation.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="The generation it reflects.")


class TrialCounts(_Model):
    """Trials by state; a retried trial is counted once."""

    total: int = Field(0, description="Trials asked from Optuna so far.")
    running: int = Field(0, description="Trials whose Job is active.")
    completed: int = Field(0, description="Trials that finished with a result.")
    pruned: int = Field(0, description="Trials stopped early by the pruner.")
    failed: int = Field(0, description="Trials that failed (user error, deadline, no result).")
    retried: int = Field(0, description="Infrastructure retries launched (attempts beyond 1).")


class TrialSummary(_Model):
    """A finished trial's number, objective values and parameters."""

    number: int
    values: list[float]
    params: dict[str, str] = Field(
        default_factory=dict, description="Parameter values rendered as text."
    )


class GpuSeconds(_Model):
    """GPU time accounting (pod runtime x GPUs requested)."""

    used: float = Field(0.0, description="GPU-seconds used by all trials.")
    saved_by_pruning: float = Field(
        0.0, description="Estimated GPU-seconds pruned trials would have used in full."
    )


class TuningStudyStatus(_Model):
    """What the operator observed; every field is declared so that none is lost."""

    model_config = ConfigDict(strict=False)

    observed_generation: int | None = None
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Invalid", "Suspended"] | None = (
        Field(None, description="A one-word summary for kubectl; conditions hold the detail.")
    )
    message: str | None = Field(None, description="Why the study is in its state.")
    progress: str | None = Field(None, description="Finished trials / maxTrials, e.g. 12/60.")
    conditions: list[Condition] = Field(default_factory=list)
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_trial: TrialSummary | None = Field(None, description="Best trial (single objective).")
    best_value: str | None = Field(None, description="Best objective value, as text.")
    pareto_front: list[TrialSummary] = Field(
        default_factory=list, description="Pareto-optimal trials (multi-objective)."
    )
    gpu_seconds: GpuSeconds = Field(default_factory=GpuSeconds)
    start_time: str | None = None
    completion_time: str | None = None
    optuna_study_name: str | None = Field(None, description="The study's name in Optuna storage.")


class TuningStudy(BaseModel):
    """A hyperparameter-tuning study: a search space, a sampler, and a trial Job template."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TuningStudy"]
    metadata: ObjectMeta
    spec: TuningStudySpec
    status: TuningStudyStatus | None = None

    def to_manifest(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
