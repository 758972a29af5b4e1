"""The TuningStudy API (group ``kubetune.io``, version ``v1alpha1``).

This pydantic model is the single source of truth: the CRD in ``crds/`` is generated from it
(``kubetune crd``), the operator and the local runner validate manifests with it, and
``kubectl explain`` shows the field descriptions written here. Cross-field rules live twice on
purpose: as model validators (precise messages, used everywhere) and as CEL
``x-kubernetes-validations`` (so the API server refuses a bad study before the operator sees it).
Tests check that both agree, against a real kube-apiserver too.

Whatever the model accepts, the API server must accept: every bound the CRD declares comes from
a ``Field`` here. A few checks are the model's alone because CEL cannot see the values (mixed-type
choices, ``when.in``, warm starts, the pod template) or cannot compute them (the Grid's size);
docs/validation.md lists them, the fields fixed at creation, and the CEL cost budget.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard

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
#: Longest parameter or objective name; CEL cost estimates need every string bounded.
MAX_NAME_LENGTH = 63
#: Largest Grid study (points in the product of all grids); Optuna materialises the product.
MAX_GRID_POINTS = 100_000
#: Integers exact in a JSON double and far inside int64, so the API server and CEL agree.
MAX_JSON_INT = 2**53 - 1
#: The Job fields kubetune copies (ttlSecondsAfterFinished) are int32.
MAX_INT32 = 2**31 - 1

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


Rule = tuple[str, str] | dict[str, str]


def _cel(*rules: Rule, **extra: Any) -> dict[str, Any]:
    """``x-kubernetes-validations`` for a schema node: (rule, message) pairs, or dicts that
    also carry ``fieldPath``/``reason``; ``extra`` adds other schema keywords."""
    out = [r if isinstance(r, dict) else {"rule": r[0], "message": r[1]} for r in rules]
    return {"x-kubernetes-validations": out, **extra}


def _name(description: str) -> Any:
    return Field(pattern=_NAME_RE, max_length=MAX_NAME_LENGTH, description=description)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
    )


class Objective(_Model):
    """One value the trainer reports; several objectives make a multi-objective study."""

    name: str = _name("Name of the metric, e.g. val_accuracy or val_loss.")
    direction: Literal["maximize", "minimize"] = Field(
        description="Whether larger or smaller values are better."
    )
    goal: float | None = Field(
        None,
        description="Good enough: once a complete trial reaches this value (at least it when "
        "maximizing, at most when minimizing) the study ends Succeeded with reason GoalReached "
        "and its running trials are stopped. With several objectives, one trial must reach "
        "every goal given (objectives without a goal are not checked).",
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
            (
                "!has(self.step) || self.step <= self.high - self.low",
                "step must not exceed high - low",
            ),
        )
    )

    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (learning rates, weight decay).")
    step: float | None = Field(
        None, gt=0, description="Discretisation step; values are low + k*step."
    )

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _finite(cls, v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
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
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step ({self.step}) must not exceed high - low")
        return self

    def grid_size(self) -> int | None:
        """Points of a stepped range; None for a continuous one."""
        if self.step is None:
            return None
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1


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
            (
                "!has(self.step) || self.step <= self.high - self.low",
                "step must not exceed high - low",
            ),
        )
    )

    low: int = Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT, description="Lower bound (inclusive).")
    high: int = Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT, description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale.")
    step: int = Field(1, ge=1, le=MAX_JSON_INT, description="Distance between candidate values.")

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"a log range needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("log ranges take no step")
        if self.step > self.high - self.low:
            raise ValueError(f"step ({self.step}) must not exceed high - low")
        return self

    def on_grid(self, value: int) -> bool:
        """Whether Optuna can propose ``value`` (in range and on the step grid)."""
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def first_at_least(self, bound: int) -> int:
        """The smallest value on the grid that is >= ``bound`` (may exceed high)."""
        start = max(bound, self.low)
        return start + (-(start - self.low)) % self.step

    def grid_size(self) -> int:
        return (self.high - self.low) // self.step + 1


def _scalar_ok(v: object) -> bool:
    return isinstance(v, str | bool | int) or (isinstance(v, float) and math.isfinite(v))


def _same_scalar(a: object, b: object) -> bool:
    """Equal and of the same type: True is not 1, and 1 is not 1.0."""
    return type(a) is type(b) and a == b


class Categorical(_Model):
    """A parameter chosen from a list of values (strings, numbers or booleans)."""

    choices: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)] = Field(
        description="The candidate values; at least one, all distinct. A parameter with "
        "choices [true, false] is a boolean that other parameters can depend on."
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
    """Makes a parameter exist only when an earlier parameter has certain values.

    Either ``in`` (some choices of a categorical parent, e.g. ``[sgd]`` or ``[true]``, or some
    values of an int parent) or, for an int parent, a range ``atLeast``/``atMost`` (Optuna's
    ``if n_layers >= 2: suggest(...)``).
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.atLeast) || !has(self.atMost) || self.atLeast <= self.atMost",
                "atLeast must not exceed atMost",
            ),
            # `in` holds mixed scalars, which CEL cannot see; the schema itself says "either
            # in, or atLeast/atMost" (a value-only oneOf is allowed in a structural schema).
            oneOf=[
                {"required": ["in"]},
                {"anyOf": [{"required": ["atLeast"]}, {"required": ["atMost"]}]},
            ],
        )
    )

    param: str = _name("Name of an earlier categorical or int parameter.")
    in_: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)] | None = Field(
        None,
        alias="in",
        description="Values of that parameter for which this one is sampled "
        "(choices of a categorical parent, integers of an int parent).",
    )
    at_least: int | None = Field(
        None,
        ge=-MAX_JSON_INT,
        le=MAX_JSON_INT,
        description="Int parent only: sample this parameter when the parent is >= atLeast.",
    )
    at_most: int | None = Field(
        None,
        ge=-MAX_JSON_INT,
        le=MAX_JSON_INT,
        description="Int parent only: sample this parameter when the parent is <= atMost.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Condition_:
        ranged = self.at_least is not None or self.at_most is not None
        if self.in_ is not None and ranged:
            raise ValueError("give either in or atLeast/atMost, not both")
        if self.in_ is None and not ranged:
            raise ValueError("give in, or atLeast/atMost")
        low, high = self.at_least, self.at_most
        if low is not None and high is not None and low > high:
            raise ValueError(f"atLeast ({low}) must not exceed atMost ({high})")
        return self

    @property
    def ranged(self) -> bool:
        return self.in_ is None

    def matches(self, value: object) -> bool:
        """Whether the parent's value activates the parameter."""
        if self.in_ is not None:
            return any(_same_scalar(c, value) for c in self.in_)
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return (self.at_least is None or value >= self.at_least) and (
            self.at_most is None or value <= self.at_most
        )

    def describe(self) -> str:
        """``optimizer in ['sgd']``, ``n_layers >= 2``, ``depth in [2, 4]`` (for people)."""
        if self.in_ is not None:
            return f"{self.param} in {list(self.in_)}"
        if self.at_most is None:
            return f"{self.param} >= {self.at_least}"
        if self.at_least is None:
            return f"{self.param} <= {self.at_most}"
        return f"{self.at_least} <= {self.param} <= {self.at_most}"


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

    name: str = _name(
        "Parameter name; reaches the trainer as KUBETUNE_PARAM_<NAME> "
        "(upper-cased, other characters as _) and in KUBETUNE_PARAMS."
    )
    float_: FloatRange | None = Field(None, alias="float", description="A real-valued range.")
    int_: IntRange | None = Field(None, alias="int", description="An integer range.")
    categorical: Categorical | None = Field(None, description="A list of choices.")
    when: Condition_ | None = Field(
        None, description="Sample this parameter only when an earlier one has certain values."
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
            return any(_same_scalar(c, value) for c in self.categorical.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.int_ is not None:
            return isinstance(value, int) and self.int_.low <= value <= self.int_.high
        assert self.float_ is not None
        return math.isfinite(value) and self.float_.low <= value <= self.float_.high

    def grid_size(self) -> int | None:
        """How many values the Grid sampler tries; None for a continuous range."""
        if self.categorical is not None:
            return len(self.categorical.choices)
        if self.int_ is not None:
            return self.int_.grid_size()
        assert self.float_ is not None
        return self.float_.grid_size()


_SAMPLER_FIELDS: dict[str, frozenset[str]] = {
    "Random": frozenset(),
    "Grid": frozenset(),
    "TPE": frozenset({"multivariate", "group", "n_startup_trials", "constant_liar"}),
    "CmaEs": frozenset({"n_startup_trials", "with_margin", "use_separable_cma"}),
    "QMC": frozenset({"qmc_type", "scramble"}),
    "GP": frozenset({"n_startup_trials", "deterministic_objective"}),
    "NSGAII": frozenset({"population_size", "mutation_prob", "crossover_prob", "swapping_prob"}),
}


def _type_of(obj: str, default: str) -> str:
    """CEL for ``obj.type`` with its default: the API server stores what the user wrote, and
    reading an absent field is an error in CEL, not the default."""
    return f"(has({obj}.type) ? {obj}.type : '{default}')"


def _options_rules(table: dict[str, frozenset[str]], what: str, default: str) -> list[Rule]:
    """One CEL rule per option: it may only be set for the types that take it."""
    rules: list[Rule] = []
    for option in sorted({o for opts in table.values() for o in opts}, key=to_camel):
        owners = [t for t, opts in table.items() if option in opts]
        field = to_camel(option)
        allowed = ", ".join(f"'{t}'" for t in owners)
        rules.append(
            (
                f"!has(self.{field}) || {_type_of('self', default)} in [{allowed}]",
                f"{field} applies only to the {' or '.join(owners)} {what}",
            )
        )
    return rules


class Sampler(_Model):
    """How Optuna proposes the next parameters."""

    model_config = ConfigDict(
        json_schema_extra=_cel(*_options_rules(_SAMPLER_FIELDS, "sampler", "TPE"))
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
            *_options_rules(_PRUNER_FIELDS, "pruner", "None"),
            (
                f"{_type_of('self', 'None')} != 'Percentile' || has(self.percentile)",
                "the Percentile pruner needs percentile",
            ),
            (
                f"{_type_of('self', 'None')} != 'Patience' || has(self.patience)",
                "the Patience pruner needs patience",
            ),
            (
                f"{_type_of('self', 'None')} != 'Threshold' || has(self.lower) || has(self.upper)",
                "the Threshold pruner needs lower or upper",
            ),
            (
                "!has(self.minResource) || !has(self.maxResource) || "
                "self.minResource <= self.maxResource",
                "minResource must not exceed maxResource",
            ),
            (
                "!has(self.lower) || !has(self.upper) || self.lower <= self.upper",
                "lower must not exceed upper",
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
        None, ge=0, le=MAX_INT32, description="Steps before a trial can be pruned."
    )
    interval_steps: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Check every this many steps."
    )
    percentile: float | None = Field(None, ge=0, le=100, description="Percentile: keep above.")
    min_resource: int | None = Field(
        None, ge=1, le=MAX_INT32, description="SH/Hyperband: minimum steps."
    )
    max_resource: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Hyperband: steps of a full trial."
    )
    reduction_factor: int | None = Field(
        None, ge=2, le=MAX_INT32, description="SH/Hyperband: keep 1/factor."
    )
    min_early_stopping_rate: int | None = Field(
        None, ge=0, le=MAX_INT32, description="SH: rung offset."
    )
    patience: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Patience: steps without improvement."
    )
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
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not exceed upper ({self.upper})")
        return self


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


# --- Rules across parameters: on the searchSpace list (self), cheaper than on spec ---------
# Names are unique by the list's map key (x-kubernetes-list-map-keys: [name]); `in` values and
# categorical choices hold mixed scalars, which a structural schema can only leave untyped, and
# the API server hides untyped values from CEL: those checks stay in the model (docs/validation.md).


def _env_of(name: str) -> str:
    """CEL for the part of ``param_env_name(name)`` after the prefix (names are [A-Za-z0-9_.-])."""
    return f"{name}.upperAscii().replace('-', '_').replace('.', '_')"


def _int_condition_reachable() -> str:
    """CEL: the smallest value on int parent q's grid that is >= atLeast is also <= atMost."""
    lo = "(has(p.when.atLeast) && p.when.atLeast > q.int.low ? p.when.atLeast : q.int.low)"
    hi = "(has(p.when.atMost) && p.when.atMost < q.int.high ? p.when.atMost : q.int.high)"
    step = "(has(q.int.step) ? q.int.step : 1)"
    return f"{lo} + ({step} - ({lo} - q.int.low) % {step}) % {step} <= {hi}"


_RANGED = "(has(p.when.atLeast) || has(p.when.atMost))"


def _immutable(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message, "reason": "FieldValueForbidden"}
    if field_path:
        out["fieldPath"] = field_path
    return out


_SEARCH_SPACE_RULES: list[Rule] = [
    (
        f"self.all(p, self.exists_one(q, {_env_of('q.name')} == {_env_of('p.name')}))",
        "parameter names must map to distinct environment variables "
        "(KUBETUNE_PARAM_<NAME>: upper-cased, '-' and '.' as '_')",
    ),
    (
        # indexOf on the parameters themselves: a list made by map() has no size bound
        # the cost estimator can see, which put this rule at over 100x the budget.
        "self.all(p, !has(p.when) || "
        "self.exists(q, q.name == p.when.param && self.indexOf(q) < self.indexOf(p)))",
        "when.param must name an earlier parameter of the search space",
    ),
    (
        "self.all(p, !has(p.when) || self.all(q, q.name != p.when.param || "
        "has(q.categorical) || has(q.int)))",
        "when.param must name a categorical or int parameter, not a float one",
    ),
    (
        f"self.all(p, !has(p.when) || !{_RANGED} || "
        "self.all(q, q.name != p.when.param || has(q.int)))",
        "when.atLeast/atMost need an int parent (use when.in for a categorical one)",
    ),
    (
        f"self.all(p, !has(p.when) || !{_RANGED} || self.all(q, q.name != p.when.param || "
        f"!has(q.int) || {_int_condition_reachable()}))",
        "when.atLeast/atMost select no value of the int parent's range and step",
    ),
    _immutable(
        "self == oldSelf",
        "searchSpace cannot change after creation (Optuna's "
        "trials are tied to it); create a new study",
    ),
]

# --- Rules across sections: on spec --------------------------------------------------------
_SAMPLER_TYPE = "(has(self.sampler) && has(self.sampler.type) ? self.sampler.type : 'TPE')"
_PRUNER_TYPE = "(has(self.pruner) && has(self.pruner.type) ? self.pruner.type : 'None')"
_RESULT_FROM = (
    "(has(self.trial.result) && has(self.trial.result.from) ? self.trial.result.from : 'Reporter')"
)


def _old(expr: str) -> str:
    return expr.replace("self.", "oldSelf.")


_SPEC_RULES: list[Rule] = [
    {
        "rule": f"{_SAMPLER_TYPE} != 'Grid' || "
        "self.searchSpace.all(p, !has(p.float) || has(p.float.step))",
        "message": "the Grid sampler needs a finite space: give every float parameter a step",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": f"{_SAMPLER_TYPE} != 'CmaEs' || size(self.objectives) == 1",
        "message": "the CmaEs sampler is single-objective; use NSGAII, TPE or GP",
        "fieldPath": ".sampler",
    },
    {
        "rule": f"size(self.objectives) == 1 || {_PRUNER_TYPE} == 'None'",
        "message": "pruning works with a single objective only (set pruner.type: None)",
        "fieldPath": ".pruner",
    },
    {
        "rule": f"{_PRUNER_TYPE} == 'None' || {_RESULT_FROM} == 'Reporter'",
        "message": "pruning needs trial.result.from: Reporter",
        "fieldPath": ".trial",
    },
    _immutable(
        "has(self.sampler) == has(oldSelf.sampler) && "
        "(!has(self.sampler) || self.sampler == oldSelf.sampler)",
        "sampler cannot change after creation (Optuna's sampler state is tied to it); "
        "create a new study",
        ".sampler",
    ),
    _immutable(
        f"{_PRUNER_TYPE} == {_old(_PRUNER_TYPE)}",
        "pruner.type cannot change after creation (its options can)",
        ".pruner",
    ),
    _immutable(
        f"{_RESULT_FROM} == {_old(_RESULT_FROM)}",
        "trial.result.from cannot change after creation (running trials report one way)",
        ".trial",
    ),
]

_BY_NAME: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


class TuningStudySpec(_Model):
    """What to tune, how to search, and how each trial runs."""

    model_config = ConfigDict(json_schema_extra=_cel(*_SPEC_RULES))

    objectives: Annotated[list[Objective], Field(min_length=1, max_length=MAX_OBJECTIVES)] = Field(
        description="What to optimise; more than one makes a multi-objective study. "
        "Names are unique; fixed at creation.",
        json_schema_extra={
            **_BY_NAME,
            **_cel(_immutable("self == oldSelf", "objectives cannot change after creation")),
        },
    )
    search_space: Annotated[list[Parameter], Field(min_length=1, max_length=MAX_PARAMETERS)] = (
        Field(
            description="The parameters, sampled in this order; a conditional one follows the "
            "parameter it depends on. Names are unique; fixed at creation.",
            json_schema_extra={**_BY_NAME, **_cel(*_SEARCH_SPACE_RULES)},
        )
    )
    sampler: Sampler = Field(
        default_factory=Sampler, description="The Optuna sampler; fixed at creation."
    )
    pruner: Pruner = Field(
        default_factory=Pruner,
        description="The Optuna pruner; its type is fixed at creation, its options are not.",
    )
    budget: Budget = Field(default_factory=Budget, description="Trial counts and limits.")
    enqueue_trials: Annotated[
        list[Annotated[dict[str, Scalar], Field(max_length=MAX_PARAMETERS)]],
        Field(max_length=MAX_ENQUEUED),
    ] = Field(
        default_factory=list,
        description="Known-good parameter sets to try first (warm start).",
        json_schema_extra={
            "items": {
                "type": "object",
                "maxProperties": MAX_PARAMETERS,
                "x-kubernetes-preserve-unknown-fields": True,
            }
        },
    )
    suspend: bool = Field(
        False,
        description="While true, launch no new trials and suspend the running trials' Jobs "
        "(their pods are deleted; false starts them again from the beginning). With queueName "
        "the Jobs are Kueue's to suspend: then only new launches wait.",
    )
    trial: TrialSpec = Field(description="How each trial runs.")

    @model_validator(mode="after")
    def _cross_field(self) -> TuningStudySpec:
        seen = _check_parameters(self.search_space)
        _check_strategy(self)
        _check_enqueued(self.enqueue_trials, seen)
        return self

    def immutable_view(self) -> dict[str, Any]:
        """The parts an Optuna study cannot change under running trials."""
        dump = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {k: dump[k] for k in ("objectives", "searchSpace", "sampler")}


def _check_parameters(space: list[Parameter]) -> dict[str, Parameter]:
    """Unique names and env variables, conditions on earlier parameters; the params by name."""
    seen: dict[str, Parameter] = {}
    for i, p in enumerate(space):
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
            _check_condition(where, p.when, seen.get(p.when.param))
        seen[p.name] = p
    return seen


def _check_condition(where: str, when: Condition_, parent: Parameter | None) -> None:
    name = when.param
    if parent is None:
        raise ValueError(f"{where}: when.param {name!r} must name an earlier parameter")
    if parent.float_ is not None:
        raise ValueError(
            f"{where}: when.param {name!r} is a float parameter; a condition needs a "
            "categorical or int parent"
        )
    if when.in_ is not None:
        if parent.categorical is not None:
            bad = [v for v in when.in_ if not parent.admits(v)]
            if bad:
                raise ValueError(f"{where}: when.in values {bad!r} are not choices of {name!r}")
            return
        assert parent.int_ is not None
        r = parent.int_
        bad = [v for v in when.in_ if not (_is_int(v) and r.on_grid(v))]
        if bad:
            raise ValueError(
                f"{where}: when.in values {bad!r} are not values of {name!r} "
                f"(integers {r.low}..{r.high}, step {r.step})"
            )
        return
    if parent.int_ is None:
        raise ValueError(
            f"{where}: when.atLeast/atMost need an int parent; {name!r} is categorical "
            "(use when.in)"
        )
    r = parent.int_
    top = r.high if when.at_most is None else min(r.high, when.at_most)
    if r.first_at_least(r.low if when.at_least is None else when.at_least) > top:
        raise ValueError(
            f"{where}: when {when.describe()} selects no value of {name!r} "
            f"(integers {r.low}..{r.high}, step {r.step})"
        )


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_strategy(spec: TuningStudySpec) -> None:
    """Sampler, pruner, objectives and result mode fit together."""
    names = [o.name for o in spec.objectives]
    if len(set(names)) != len(names):
        raise ValueError("objective names must be unique")
    if spec.sampler.type == "Grid":
        points = 1
        for p in spec.search_space:
            size = p.grid_size()
            if size is None:
                raise ValueError(
                    f"the Grid sampler needs a finite space: {p.name!r} is a continuous "
                    "float range (give it a step)"
                )
            points *= size
            if points > MAX_GRID_POINTS:
                raise ValueError(
                    f"the Grid sampler tries every point and this space has more than "
                    f"{MAX_GRID_POINTS}; use another sampler or coarser steps"
                )
    multi = len(spec.objectives) > 1
    if multi and spec.sampler.type == "CmaEs":
        raise ValueError("the CmaEs sampler is single-objective; use NSGAII, TPE or GP")
    if multi and spec.pruner.type != "None":
        raise ValueError("pruning works with a single objective only (set pruner.type: None)")
    if spec.pruner.type != "None" and spec.trial.result.from_ != "Reporter":
        raise ValueError("pruning needs trial.result.from: Reporter")


def _check_enqueued(enqueued: list[dict[str, Scalar]], params: dict[str, Parameter]) -> None:
    for i, fixed in enumerate(enqueued):
        unknown = sorted(set(fixed) - set(params))
        if unknown:
            raise ValueError(f"enqueueTrials[{i}]: unknown parameters {unknown}")
        for name, value in fixed.items():
            if not params[name].admits(value):
                raise ValueError(
                    f"enqueueTrials[{i}]: {name}={value!r} is outside its range or choices"
                )


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
