"""Sampler and pruner: the type, and the options each type accepts (one table feeds both
the CEL rules and the Python checks)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune.spec._base import MAX_INT32, PrunerType, Rule, SamplerType, _cel, _Model

SAMPLER_OPTIONS: dict[str, frozenset[str]] = {
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


def _refuse_stray_options(model: Sampler | Pruner, allowed: frozenset[str], what: str) -> None:
    """The model's side of :func:`_options_rules`: options set that the chosen type does not
    take are refused, all named in one message."""
    stray = sorted(
        to_camel(f)
        for f in model.model_fields_set
        if f not in allowed and getattr(model, f) is not None
    )
    if stray:
        verb = "does" if len(stray) == 1 else "do"
        raise ValueError(f"{', '.join(stray)} {verb} not apply to the {model.type} {what}")


class Sampler(_Model):
    """How Optuna proposes the next parameters."""

    model_config = ConfigDict(
        json_schema_extra=_cel(*_options_rules(SAMPLER_OPTIONS, "sampler", "TPE"))
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
        _refuse_stray_options(self, SAMPLER_OPTIONS[self.type] | {"type", "seed"}, "sampler")
        return self


PRUNER_OPTIONS: dict[str, frozenset[str]] = {
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
            *_options_rules(PRUNER_OPTIONS, "pruner", "None"),
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
        _refuse_stray_options(self, PRUNER_OPTIONS[self.type] | {"type"}, "pruner")
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
