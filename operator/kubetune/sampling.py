"""Maps the spec's sampler, pruner and objectives onto Optuna objects."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection

from kubetune.search_space import grid, space_size

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = [
    "SamplerUnavailableError",
    "directions",
    "grid_trials",
    "make_pruner",
    "make_sampler",
    "sampler_unavailable",
]


class SamplerUnavailableError(RuntimeError):
    """The spec is valid but this installation cannot build the sampler it names."""


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (torch takes seconds to import).

    A module set to None in ``sys.modules`` counts as missing, as ``import`` itself treats it.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def sampler_unavailable(
    spec: TuningStudySpec, *, where: str = "this Python environment"
) -> str | None:
    """Why the spec's sampler cannot be built here (a sentence for a condition), else None.

    GP needs PyTorch, which the operator image leaves out on purpose: torch would take the
    image from 384 MB to 1.13 GB for one sampler. ``where`` names the place that lacks it.
    """
    if spec.sampler.type == "GP" and not _importable("torch"):
        return (
            f"the GP sampler needs PyTorch in {where}, and it is not installed there "
            "(kubetune's operator image leaves torch out on purpose: it would take the image "
            "from 384 MB to 1.13 GB); use another sampler (TPE is the default) or install "
            "kubetune[gp] where the study runs"
        )
    return None


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler minus its habit of calling ``study.stop()`` once the grid is exhausted.

    ``stop()`` only works inside ``study.optimize``; under ask-and-tell (the operator, the local
    runner) it raises from ``tell`` *before* the result is stored, losing the last trial. The
    budget logic caps grid studies at :func:`grid_trials` instead (``SearchSpaceExhausted``).
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def grid_trials(spec: TuningStudySpec) -> int | None:
    """How many trials a Grid study runs before its points repeat; None for other samplers.

    Optuna's GridSampler gives each asked trial an untried point, then re-evaluates random
    ones. Enqueued (warm-start) trials carry their own parameters and take no grid point, so
    they come on top of the grid's size (duplicates in ``enqueueTrials`` are enqueued once).
    """
    points = space_size(spec)
    if points is None:
        return None
    warm = {tuple(sorted(fixed.items())) for fixed in spec.enqueue_trials}
    return points + len(warm)


def directions(spec: TuningStudySpec) -> list[StudyDirection]:
    return [
        StudyDirection.MAXIMIZE if o.direction == "maximize" else StudyDirection.MINIMIZE
        for o in spec.objectives
    ]


def make_sampler(spec: TuningStudySpec) -> optuna.samplers.BaseSampler:
    """Build the sampler; TPE uses constant liar under parallelism so that parallel trials
    do not all land on the same point."""
    s = spec.sampler
    seed = s.seed
    match s.type:
        case "Random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "Grid":
            return _GridSampler(grid(spec), seed=seed)
        case "TPE":
            liar = s.constant_liar
            if liar is None:
                liar = spec.budget.parallelism > 1
            multivariate = bool(s.multivariate) or bool(s.group)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=multivariate,
                group=bool(s.group),
                n_startup_trials=10 if s.n_startup_trials is None else s.n_startup_trials,
                constant_liar=liar,
            )
        case "CmaEs":
            return optuna.samplers.CmaEsSampler(
                seed=seed,
                n_startup_trials=1 if s.n_startup_trials is None else s.n_startup_trials,
                with_margin=bool(s.with_margin),
                use_separable_cma=bool(s.use_separable_cma),
            )
        case "QMC":
            return optuna.samplers.QMCSampler(
                qmc_type=s.qmc_type or "sobol",
                scramble=bool(s.scramble) if s.scramble is not None else seed is not None,
                seed=seed,
            )
        case "GP":
            missing = sampler_unavailable(spec)
            if missing is not None:
                raise SamplerUnavailableError(missing)
            try:
                import torch  # noqa: F401  - GPSampler's own dependency
            except ImportError:
                raise SamplerUnavailableError(
                    "the GP sampler needs PyTorch, which is installed but cannot be imported"
                ) from None
            return optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=10 if s.n_startup_trials is None else s.n_startup_trials,
                deterministic_objective=bool(s.deterministic_objective),
            )
        case "NSGAII":
            return optuna.samplers.NSGAIISampler(
                seed=seed,
                population_size=s.population_size or 50,
                mutation_prob=s.mutation_prob,
                crossover_prob=0.9 if s.crossover_prob is None else s.crossover_prob,
                swapping_prob=0.5 if s.swapping_prob is None else s.swapping_prob,
            )
    raise AssertionError(f"unhandled sampler {s.type}")  # pragma: no cover - Literal is closed


def make_pruner(spec: TuningStudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    match p.type:
        case "None":
            return optuna.pruners.NopPruner()
        case "Median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=5 if p.n_startup_trials is None else p.n_startup_trials,
                n_warmup_steps=p.n_warmup_steps or 0,
                interval_steps=p.interval_steps or 1,
            )
        case "Percentile":
            assert p.percentile is not None
            return optuna.pruners.PercentilePruner(
                p.percentile,
                n_startup_trials=5 if p.n_startup_trials is None else p.n_startup_trials,
                n_warmup_steps=p.n_warmup_steps or 0,
                interval_steps=p.interval_steps or 1,
            )
        case "SuccessiveHalving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=p.min_resource or "auto",
                reduction_factor=p.reduction_factor or 4,
                min_early_stopping_rate=p.min_early_stopping_rate or 0,
            )
        case "Hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=p.min_resource or 1,
                max_resource=p.max_resource or "auto",
                reduction_factor=p.reduction_factor or 3,
            )
        case "Patience":
            assert p.patience is not None
            return optuna.pruners.PatientPruner(
                None, patience=p.patience, min_delta=p.min_delta or 0.0
            )
        case "Threshold":
            return optuna.pruners.ThresholdPruner(
                lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps or 0
            )
    raise AssertionError(f"unhandled pruner {p.type}")  # pragma: no cover
