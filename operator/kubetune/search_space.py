"""Maps the spec's search space onto Optuna distributions and suggestions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

# Re-exported for callers that still import them from here; they live in kubetune._env.
from kubetune._env import param_env, param_env_name

if TYPE_CHECKING:
    import optuna

    from kubetune.spec import Parameter, TuningStudySpec

__all__ = [
    "active",
    "distribution",
    "distributions",
    "grid",
    "param_env",
    "param_env_name",
    "space_size",
    "suggest_params",
]


def distribution(p: Parameter) -> BaseDistribution:
    if p.float_ is not None:
        f = p.float_
        return FloatDistribution(f.low, f.high, log=f.log, step=f.step)
    if p.int_ is not None:
        i = p.int_
        return IntDistribution(i.low, i.high, log=i.log, step=i.step)
    assert p.categorical is not None
    return CategoricalDistribution(list(p.categorical.choices))


def distributions(spec: TuningStudySpec) -> dict[str, BaseDistribution]:
    return {p.name: distribution(p) for p in spec.search_space}


def active(p: Parameter, chosen: dict[str, Any]) -> bool:
    """Whether a conditional parameter applies given the values chosen before it: its parent
    was sampled (a parent can be conditional too) and has one of the ``when`` values."""
    if p.when is None:
        return True
    if p.when.param not in chosen:
        return False
    return p.when.matches(chosen[p.when.param])


def suggest_params(trial: optuna.Trial, spec: TuningStudySpec) -> dict[str, Any]:
    """Suggest every active parameter in spec order (so a `when` sees its parent's value).

    Fixed values from enqueued trials come back through the same calls, so warm starts and
    sampled trials share one path.
    """
    chosen: dict[str, Any] = {}
    for p in spec.search_space:
        if not active(p, chosen):
            continue
        if p.float_ is not None:
            f = p.float_
            chosen[p.name] = trial.suggest_float(p.name, f.low, f.high, log=f.log, step=f.step)
        elif p.int_ is not None:
            i = p.int_
            chosen[p.name] = trial.suggest_int(p.name, i.low, i.high, log=i.log, step=i.step)
        else:
            assert p.categorical is not None
            chosen[p.name] = trial.suggest_categorical(p.name, list(p.categorical.choices))
    return chosen


def grid(spec: TuningStudySpec) -> dict[str, list[Any]]:
    """The full grid for Optuna's GridSampler (the spec guarantees a finite space)."""
    out: dict[str, list[Any]] = {}
    for p in spec.search_space:
        if p.categorical is not None:
            out[p.name] = list(p.categorical.choices)
        elif p.int_ is not None:
            d = IntDistribution(p.int_.low, p.int_.high, log=p.int_.log, step=p.int_.step)
            out[p.name] = list(range(d.low, d.high + 1, d.step))
        else:
            assert p.float_ is not None and p.float_.step is not None
            f = FloatDistribution(p.float_.low, p.float_.high, step=p.float_.step)
            assert f.step is not None
            n = round((f.high - f.low) / f.step)
            out[p.name] = [round(f.low + k * f.step, 12) for k in range(n + 1)]
    return out


def space_size(spec: TuningStudySpec) -> int | None:
    """How many distinct points a Grid study has (None for other samplers: unbounded)."""
    if spec.sampler.type != "Grid":
        return None
    size = 1
    for values in grid(spec).values():
        size *= len(values)
    return size
