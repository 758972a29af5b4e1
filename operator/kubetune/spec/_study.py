"""``TuningStudy.spec``: the rules across sections, and the checks CEL cannot make."""

from __future__ import annotations

from typing import Annotated, Any, TypeGuard

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from kubetune._env import param_env_name
from kubetune.spec._base import (
    MAX_ENQUEUED,
    MAX_GRID_POINTS,
    MAX_OBJECTIVES,
    MAX_PARAMETERS,
    Rule,
    Scalar,
    _cel,
    _Model,
)
from kubetune.spec._space import Objective, Parameter, When
from kubetune.spec._strategy import Pruner, Sampler
from kubetune.spec._trial import Budget, TrialSpec

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
        "rule": f"!has(self.trial.heartbeatTimeoutSeconds) || {_RESULT_FROM} == 'Reporter'",
        "message": "trial.heartbeatTimeoutSeconds needs trial.result.from: Reporter",
        "fieldPath": ".trial",
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


def _check_condition(where: str, when: When, parent: Parameter | None) -> None:
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
    if spec.trial.heartbeat_timeout_seconds is not None and spec.trial.result.from_ != "Reporter":
        raise ValueError("trial.heartbeatTimeoutSeconds needs trial.result.from: Reporter")


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
