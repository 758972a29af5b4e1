"""The search space (float, int and categorical ranges; ``when`` clauses) and the objectives."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from kubetune.spec._base import MAX_CHOICES, MAX_JSON_INT, Scalar, _cel, _Model, _name


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


class When(_Model):
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
    def _one_form(self) -> When:
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
    when: When | None = Field(
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
