"""The TuningStudy API (group ``kubetune.io``, version ``v1alpha1``).

This pydantic model is the single source of truth: the CRD in ``crds/`` is generated from it
(``kubetune crd``), the operator and the local runner validate manifests with it, and
``kubectl explain`` shows the field descriptions written here. Cross-field rules live twice on
purpose: as model validators (precise messages, used everywhere) and as CEL
``x-kubernetes-validations`` (so the API server refuses a bad study before the operator sees it).
Tests check that both agree.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune._env import param_env_name

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TuningStudy"
PLURAL = "tuningstudies"
SINGULAR = "tuningstudy"
SHORT_NAMES = ["ts"]

MAX_PARAMETERS = 64
MAX_CHOICES = 1000
MAX_OBJECTIVES = 8
MAX_ENQUEUED = 100
MAX_MANIFEST_BYTES = 1 << 20

Scalar = str | int | float | bool
_NAME_RE = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
# A Kubernetes object name (DNS-1123 subdomain) short enough to build Job names from.
_OBJECT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SamplerType = Literal["Random", "Grid", "TPE", "CmaEs", "QMC", "GP", "NSGAII"]
PrunerType = Literal[
    "None", "Median", "Percentile", "SuccessiveHalving", "Hyperband", "Patience", "Threshold"
]
ResultSource = Literal["Reporter", "TerminationMessage"]


class SpecError(ValueError):
    """A manifest is not a valid TuningStudy; the message names each bad field."""


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class Objective(_Model):
    """One value the trainer reports; several objectives make a multi-objective study."""

    name: str = Field(
        pattern=_NAME_RE, description="Name of the metric, e.g. val_accuracy or val_loss."
    )
    direction: Literal["maximize", "minimize"] = Field(
        description="Whether larger or smaller values are better."
    )


class FloatRange(_Model):
    """A real-valued parameter in [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.low < self.high", "low must be less than high"),
            ("!has(self.log) || !self.log || self.low > 0.0", "a log range needs low > 0"),
            (
                "!has(self.step) || !has(self.log) || !self.log",
                "step and log cannot be combined",
            ),
        )
    )

    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (learning rates, weight decay).")
    step: float | None = Field(
        None, gt=0, description="Discretisation step; values are low + k*step."
    )

    @field_validator("low", "high", "step")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self


class IntRange(_Model):
    """An integer parameter in [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.low < self.high", "low must be less than high"),
            ("!has(self.log) || !self.log || self.low >= 1", "a log range needs low >= 1"),
            (
                "!has(self.log) || !self.log || !has(self.step) || self.step == 1",
                "log ranges take no step",
            ),
        )
    )

    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale.")
    step: int = Field(1, ge=1, description="Distance between candidate values.")

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"a log range needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("log ranges take no step")
        return self


def _scalar_ok(v: object) -> bool:
    return isinstance(v, str | bool | int) or (isinstance(v, float) and math.isfinite(v))


class Categorical(_Model):
    """A parameter chosen from a list of values (strings, numbers or booleans)."""

    choices: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)] = Field(
        description="The candidate values; at least one, all distinct."
    )

    @field_validator("choices")
    @classmethod
    def _distinct(cls, v: list[Scalar]) -> list[Scalar]:
        for c in v:
            if not _scalar_ok(c):
                raise ValueError(f"choice {c!r} is not a finite number, string or boolean")
        keys = [(type(c).__name__, c) for c in v]
        if len(set(keys)) != len(keys):
            raise ValueError("choices must be distinct")
        return v


class Condition_(_Model):  # noqa: N801 - "Condition" is the metav1 status shape below
    """Makes a parameter exist only when an earlier categorical parameter has one of some values."""

    param: str = Field(pattern=_NAME_RE, description="Name of an earlier categorical parameter.")
    in_: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)] = Field(
        alias="in", description="Values of that parameter for which this one is sampled."
    )


class Parameter(_Model):
    """One dimension of the search space; set exactly one of float, int or categorical."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "[has(self.float), has(self.int), has(self.categorical)].filter(x, x).size() == 1",
                "set exactly one of float, int or categorical",
            ),
        )
    )

    name: str = Field(
        pattern=_NAME_RE,
        description="Parameter name; reaches the trainer as KUBETUNE_PARAM_<NAME> "
        "(upper-cased, other characters as _) and in KUBETUNE_PARAMS.",
    )
    float_: FloatRange | None = Field(None, alias="float", description="A real-valued range.")
    int_: IntRange | None = Field(None, alias="int", description="An integer range.")
    categorical: Categorical | None = Field(None, description="A list of choices.")
    when: Condition_ | None = Field(
        None, description="Sample this parameter only when another one has certain values."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        kinds = [
            k
            for k, v in (
                ("float", self.float_),
                ("int", self.int_),
                ("categorical", self.categorical),
            )
            if v is not None
        ]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"set exactly one of float, int or categorical (got {got})")
        return self

    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        if self.float_ is not None:
            return "float"
        if self.int_ is not None:
            return "int"
        return "categorical"

    def admits(self, value: object) -> bool:
        """Whether a fixed value (an enqueued trial's) lies in this parameter's range."""
        if self.categorical is not None:
            return any(type(c) is type(value) and c == value for c in self.categorical.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.int_ is not None:
            return isinstance(value, int) and self.int_.low <= value <= self.int_.high
        assert self.float_ is not None
        return math.isfinite(value) and self.float_.low <= value <= self.float_.high


_SAMPLER_FIELDS: dict[str, frozenset[str]] = {
    "Random": frozenset(),
    "Grid": frozenset(),
    "TPE": frozenset({"multivariate", "group", "n_startup_trials", "constant_liar"}),
    "CmaEs": frozenset({"n_startup_trials", "with_margin", "use_separable_cma"}),
    "QMC": frozenset({"qmc_type", "scramble"}),
    "GP": frozenset({"n_startup_trials", "deterministic_objective"}),
    "NSGAII": frozenset({"population_size", "mutation_prob", "crossover_prob", "swapping_prob"}),
}


class Sampler(_Model):
    """How Optuna proposes the next parameters."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.populationSize) || self.type == 'NSGAII'",
                "populationSize is an NSGAII option",
            ),
            (
                "!has(self.multivariate) || self.type == 'TPE'",
                "multivariate is a TPE option",
            ),
            ("!has(self.qmcType) || self.type == 'QMC'", "qmcType is a QMC option"),
        )
    )

    type: SamplerType = Field(
        "TPE",
        description="Random, Grid (categorical/stepped spaces only), TPE, CmaEs "
        "(single objective), QMC, GP (Gaussian process) or NSGAII (multi-objective).",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for reproducibility.")
    multivariate: bool | None = Field(None, description="TPE: model parameters jointly.")
    group: bool | None = Field(None, description="TPE: group conditional parameters.")
    n_startup_trials: int | None = Field(
        None, ge=0, le=10000, description="TPE/CmaEs/GP: random trials before modelling."
    )
    constant_liar: bool | None = Field(
        None,
        description="TPE: avoid proposing the same point to parallel trials "
        "(defaults to true when parallelism > 1).",
    )
    with_margin: bool | None = Field(None, description="CmaEs: margin for discrete params.")
    use_separable_cma: bool | None = Field(None, description="CmaEs: diagonal covariance.")
    qmc_type: Literal["sobol", "halton"] | None = Field(None, description="QMC: sequence.")
    scramble: bool | None = Field(None, description="QMC: scramble the sequence.")
    deterministic_objective: bool | None = Field(
        None, description="GP: the objective has no noise."
    )
    population_size: int | None = Field(None, ge=2, le=10000, description="NSGAII: population.")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="NSGAII: mutation rate.")
    crossover_prob: float | None = Field(None, ge=0, le=1, description="NSGAII: crossover rate.")
    swapping_prob: float | None = Field(None, ge=0, le=1, description="NSGAII: swapping rate.")

    @model_validator(mode="after")
    def _options_fit_type(self) -> Sampler:
        allowed = _SAMPLER_FIELDS[self.type] | {"type", "seed"}
        stray = sorted(
            to_camel(f)
            for f in self.model_fields_set
            if f not in allowed and getattr(self, f) is not None
        )
        if stray:
            verb = "does" if len(stray) == 1 else "do"
            raise ValueError(f"{', '.join(stray)} {verb} not apply to the {self.type} sampler")
        return self


_PRUNER_FIELDS: dict[str, frozenset[str]] = {
    "None": frozenset(),
    "Median": frozenset({"n_startup_trials", "n_warmup_steps", "interval_steps"}),
    "Percentile": frozenset({"percentile", "n_startup_trials", "n_warmup_steps", "interval_steps"}),
    "SuccessiveHalving": frozenset({"min_resource", "reduction_factor", "min_early_stopping_rate"}),
    "Hyperband": frozenset({"min_resource", "max_resource", "reduction_factor"}),
    "Patience": frozenset({"patience", "min_delta"}),
    "Threshold": frozenset({"lower", "upper", "n_warmup_steps"}),
}


class Pruner(_Model):
    """How Optuna stops unpromising trials early from their intermediate values."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.type != 'Percentile' || has(self.percentile)", "Percentile needs percentile"),
            ("self.type != 'Patience' || has(self.patience)", "Patience needs patience"),
            (
                "self.type != 'Threshold' || has(self.lower) || has(self.upper)",
                "Threshold needs lower or upper",
            ),
        )
    )

    type: PrunerType = Field(
        "None",
        description="None, Median, Percentile, SuccessiveHalving, Hyperband, Patience or "
        "Threshold. Pruning needs the Reporter result mode and a single objective.",
    )
    n_startup_trials: int | None = Field(None, ge=0, le=10000, description="Trials before pruning.")
    n_warmup_steps: int | None = Field(
        None, ge=0, description="Steps before a trial can be pruned."
    )
    interval_steps: int | None = Field(None, ge=1, description="Check every this many steps.")
    percentile: float | None = Field(None, ge=0, le=100, description="Percentile: keep above.")
    min_resource: int | None = Field(None, ge=1, description="SH/Hyperband: minimum steps.")
    max_resource: int | None = Field(None, ge=1, description="Hyperband: steps of a full trial.")
    reduction_factor: int | None = Field(None, ge=2, description="SH/Hyperband: keep 1/factor.")
    min_early_stopping_rate: int | None = Field(None, ge=0, description="SH: rung offset.")
    patience: int | None = Field(None, ge=1, description="Patience: steps without improvement.")
    min_delta: float | None = Field(None, ge=0, description="Patience: what counts as better.")
    lower: float | None = Field(None, description="Threshold: prune below this value.")
    upper: float | None = Field(None, description="Threshold: prune above this value.")

    @model_validator(mode="after")
    def _options_fit_type(self) -> Pruner:
        allowed = _PRUNER_FIELDS[self.type] | {"type"}
        stray = sorted(
            to_camel(f)
            for f in self.model_fields_set
            if f not in allowed and getattr(self, f) is not None
        )
        if stray:
            verb = "does" if len(stray) == 1 else "do"
            raise ValueError(f"{', '.join(stray)} {verb} not apply to the {self.type} pruner")
        if self.type == "Percentile" and self.percentile is None:
            raise ValueError("the Percentile pruner needs percentile")
        if self.type == "Patience" and self.patience is None:
            raise ValueError("the Patience pruner needs patience")
        if self.type == "Threshold" and self.lower is None and self.upper is None:
            raise ValueError("the Threshold pruner needs lower or upper")
        if (
            self.min_resource is not None
            and self.max_resource is not None
            and self.min_resource > self.max_resource
        ):
            raise ValueError("minResource must not exceed maxResource")
        return self


class Budget(_Model):
    """Limits on the study; parallelism and every budget can be changed while it runs."""

    max_trials: int = Field(20, ge=1, le=100000, description="Trials to run in all.")
    parallelism: int = Field(1, ge=1, le=1000, description="Trials running at once.")
    max_failed_trials: int | None = Field(
        None, ge=1, le=100000, description="Mark the study Failed after this many failed trials."
    )
    deadline_seconds: int | None = Field(
        None, ge=1, description="Launch no trial after this many seconds from the study's start."
    )
    max_gpu_seconds: int | None = Field(
        None, ge=1, description="Launch no trial once the study has used this many GPU-seconds."
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
        None, ge=1, description="A trial running longer than this fails with DeadlineExceeded."
    )
    ttl_seconds_after_finished: int | None = Field(
        3600, ge=0, description="Delete finished trial Jobs after this many seconds."
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


class TuningStudySpec(_Model):
    """What to tune, how to search, and how each trial runs."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.searchSpace.all(p, self.searchSpace.exists_one(q, q.name == p.name))",
                "parameter names must be unique",
            ),
            (
                "self.searchSpace.all(p, !has(p.when) || self.searchSpace.exists(q, "
                "q.name == p.when.param && has(q.categorical)))",
                "when.param must name a categorical parameter of the search space",
            ),
            (
                "!has(self.sampler) || self.sampler.type != 'Grid' || self.searchSpace.all(p, "
                "has(p.categorical) || has(p.int) || (has(p.float) && has(p.float.step)))",
                "the Grid sampler needs a finite space (categorical, int or stepped float)",
            ),
            (
                "!has(self.sampler) || self.sampler.type != 'CmaEs' || size(self.objectives) == 1",
                "the CmaEs sampler is single-objective",
            ),
            (
                "size(self.objectives) == 1 || !has(self.pruner) || self.pruner.type == 'None'",
                "pruning works with a single objective only",
            ),
            (
                "!has(self.pruner) || self.pruner.type == 'None' || !has(self.trial.result) || "
                "!has(self.trial.result.from) || self.trial.result.from == 'Reporter'",
                "pruning needs trial.result.from: Reporter",
            ),
        )
    )

    objectives: Annotated[list[Objective], Field(min_length=1, max_length=MAX_OBJECTIVES)] = Field(
        description="What to optimise; more than one makes a multi-objective study."
    )
    search_space: Annotated[list[Parameter], Field(min_length=1, max_length=MAX_PARAMETERS)] = (
        Field(description="The parameters; conditional ones follow the parameter they depend on.")
    )
    sampler: Sampler = Field(default_factory=Sampler, description="The Optuna sampler.")
    pruner: Pruner = Field(default_factory=Pruner, description="The Optuna pruner.")
    budget: Budget = Field(default_factory=Budget, description="Trial counts and limits.")
    enqueue_trials: Annotated[list[dict[str, Scalar]], Field(max_length=MAX_ENQUEUED)] = Field(
        default_factory=list,
        description="Known-good parameter sets to try first (warm start).",
        json_schema_extra={
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    )
    suspend: bool = Field(
        False, description="Launch no new trials while true; running trials finish."
    )
    trial: TrialSpec = Field(description="How each trial runs.")

    @model_validator(mode="after")
    def _cross_field(self) -> TuningStudySpec:
        seen: dict[str, Parameter] = {}
        for i, p in enumerate(self.search_space):
            where = f"searchSpace[{i}] ({p.name})"
            if p.name in seen:
                raise ValueError(f"{where}: parameter name {p.name!r} is used twice")
            env = param_env_name(p.name)
            clash = next((q for q in seen if param_env_name(q) == env), None)
            if clash is not None:
                raise ValueError(
                    f"{where}: {p.name!r} and {clash!r} map to the same environment variable"
                )
            if p.when is not None:
                parent = seen.get(p.when.param)
                if parent is None:
                    raise ValueError(
                        f"{where}: when.param {p.when.param!r} must name an earlier parameter"
                    )
                if parent.categorical is None:
                    raise ValueError(f"{where}: when.param {p.when.param!r} is not categorical")
                bad = [v for v in p.when.in_ if not parent.admits(v)]
                if bad:
                    raise ValueError(
                        f"{where}: when.in values {bad!r} are not choices of {p.when.param!r}"
                    )
            seen[p.name] = p
        if self.sampler.type == "Grid":
            for p in self.search_space:
                if p.float_ is not None and p.float_.step is None:
                    raise ValueError(
                        f"the Grid sampler needs a finite space: {p.name!r} is a continuous "
                        "float range (give it a step)"
                    )
        multi = len(self.objectives) > 1
        if multi and self.sampler.type == "CmaEs":
            raise ValueError("the CmaEs sampler is single-objective; use NSGAII, TPE or GP")
        if multi and self.pruner.type != "None":
            raise ValueError("pruning works with a single objective only (set pruner.type: None)")
        if self.pruner.type != "None" and self.trial.result.from_ != "Reporter":
            raise ValueError("pruning needs trial.result.from: Reporter")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("objective names must be unique")
        for i, fixed in enumerate(self.enqueue_trials):
            unknown = sorted(set(fixed) - set(seen))
            if unknown:
                raise ValueError(f"enqueueTrials[{i}]: unknown parameters {unknown}")
            for name, value in fixed.items():
                if not seen[name].admits(value):
                    raise ValueError(
                        f"enqueueTrials[{i}]: {name}={value!r} is outside its range or choices"
                    )
        return self

    def immutable_view(self) -> dict[str, Any]:
        """The parts an Optuna study cannot change under running trials."""
        dump = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {k: dump[k] for k in ("objectives", "searchSpace", "sampler")}


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
        if not _OBJECT_NAME_RE.match(v):
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


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses YAML aliases: a few anchors can expand into gigabytes (billion laughs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not supported in manifests", event.start_mark
            )
        return super().compose_node(parent, index)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        parts = e["loc"]
        for n, part in enumerate(parts):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif n == len(parts) - 1 and n > 0 and part in {"str", "int", "float", "bool"}:
                continue  # a trailing union member tag adds nothing for a reader
            else:
                loc += f".{part}" if loc else str(part)
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '<root>'}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def parse_manifest(obj: object) -> TuningStudy:
    """Validate an already-decoded manifest; raise SpecError naming the bad fields."""
    if not isinstance(obj, dict):
        raise SpecError(f"<root>: a TuningStudy must be a mapping, got {type(obj).__name__}")
    try:
        return TuningStudy.model_validate(obj)
    except ValidationError as e:
        raise SpecError(_format_error(e)) from None
    except RecursionError:
        raise SpecError("<root>: manifest is nested too deeply") from None


def load_manifest(source: str | Path) -> TuningStudy:
    """Load a TuningStudy from a path or from YAML text."""
    if isinstance(source, Path) or ("\n" not in source and Path(source).exists()):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise SpecError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not UTF-8 text") from None
    else:
        text = source
    if len(text) > MAX_MANIFEST_BYTES:
        raise SpecError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        docs = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {e}") from None
    except RecursionError:
        raise SpecError("<root>: manifest is nested too deeply") from None
    studies = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(studies) != 1:
        if len(docs) == 1:
            return parse_manifest(docs[0])
        raise SpecError(f"expected exactly one TuningStudy document, found {len(studies)}")
    return parse_manifest(studies[0])
