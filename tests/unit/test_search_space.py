"""Spec -> real Optuna distributions, samplers and pruners."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kubetune.sampling import directions, make_pruner, make_sampler
from kubetune.search_space import distributions, grid, param_env, param_env_name, suggest_params
from kubetune.spec import TuningStudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(**over: Any) -> TuningStudySpec:
    raw: dict[str, Any] = {
        "objectives": [{"name": "acc", "direction": "maximize"}],
        "searchSpace": [
            {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}},
            {"name": "layers", "int": {"low": 1, "high": 8, "step": 1}},
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
            {
                "name": "momentum",
                "float": {"low": 0.0, "high": 0.9, "step": 0.1},
                "when": {"param": "optimizer", "in": ["sgd"]},
            },
        ],
        "trial": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
    }
    raw.update(over)
    return TuningStudySpec.model_validate(raw)


def test_distributions_are_real_optuna_objects() -> None:
    d = distributions(_spec())
    assert d["lr"] == FloatDistribution(1e-4, 0.1, log=True)
    assert d["layers"] == IntDistribution(1, 8)
    assert d["optimizer"] == CategoricalDistribution(["sgd", "adam"])
    assert d["momentum"] == FloatDistribution(0.0, 0.9, step=0.1)


def test_conditional_parameter_only_when_parent_matches() -> None:
    spec = _spec()
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions(spec))
    seen = {"sgd": 0, "adam": 0}
    for _ in range(30):
        trial = study.ask()
        params = suggest_params(trial, spec)
        seen[params["optimizer"]] += 1
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert 1e-4 <= params["lr"] <= 0.1
        study.tell(trial, params["lr"])
    assert seen["sgd"] and seen["adam"]


def test_enqueued_values_come_back_through_suggest() -> None:
    spec = _spec()
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions(spec))
    fixed = {"lr": 0.01, "layers": 3, "optimizer": "sgd", "momentum": 0.5}
    study.enqueue_trial(fixed)
    assert suggest_params(study.ask(), spec) == fixed


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ({"type": "Random", "seed": 1}, optuna.samplers.RandomSampler),
        ({"type": "TPE", "multivariate": True}, optuna.samplers.TPESampler),
        ({"type": "CmaEs"}, optuna.samplers.CmaEsSampler),
        ({"type": "QMC", "qmcType": "halton"}, optuna.samplers.QMCSampler),
        ({"type": "GP"}, optuna.samplers.GPSampler),
        ({"type": "NSGAII", "populationSize": 4}, optuna.samplers.NSGAIISampler),
    ],
)
def test_every_sampler_runs_a_few_trials(sampler: dict[str, Any], cls: type) -> None:
    spec = _spec(sampler=sampler)
    s = make_sampler(spec)
    assert isinstance(s, cls)
    study = optuna.create_study(sampler=s, directions=directions(spec))
    for _ in range(4):
        t = study.ask()
        study.tell(t, suggest_params(t, spec)["lr"])
    assert len(study.trials) == 4


def test_grid_sampler_covers_the_whole_grid_once() -> None:
    spec = _spec(
        sampler={"type": "Grid"},
        searchSpace=[
            {"name": "lr", "categorical": {"choices": [0.01, 0.1]}},
            {"name": "bs", "int": {"low": 16, "high": 48, "step": 16}},
            {"name": "drop", "float": {"low": 0.0, "high": 0.5, "step": 0.25}},
        ],
    )
    assert grid(spec) == {"lr": [0.01, 0.1], "bs": [16, 32, 48], "drop": [0.0, 0.25, 0.5]}
    study = optuna.create_study(sampler=make_sampler(spec))
    points = set()
    for _ in range(18):
        t = study.ask()
        p = suggest_params(t, spec)
        points.add((p["lr"], p["bs"], p["drop"]))
        study.tell(t, 0.0)
    assert len(points) == 18


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"type": "None"}, optuna.pruners.NopPruner),
        ({"type": "Median", "nWarmupSteps": 2}, optuna.pruners.MedianPruner),
        ({"type": "Percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
        (
            {"type": "SuccessiveHalving", "reductionFactor": 3},
            optuna.pruners.SuccessiveHalvingPruner,
        ),
        ({"type": "Hyperband", "minResource": 1, "maxResource": 9}, optuna.pruners.HyperbandPruner),
        ({"type": "Patience", "patience": 2}, optuna.pruners.PatientPruner),
        ({"type": "Threshold", "lower": 0.1}, optuna.pruners.ThresholdPruner),
    ],
)
def test_pruners(pruner: dict[str, Any], cls: type) -> None:
    assert isinstance(make_pruner(_spec(pruner=pruner)), cls)


def test_threshold_pruner_really_prunes() -> None:
    spec = _spec(pruner={"type": "Threshold", "lower": 0.5})
    study = optuna.create_study(pruner=make_pruner(spec), directions=directions(spec))
    t = study.ask()
    t.report(0.1, 0)
    assert t.should_prune()


def test_directions_follow_objectives() -> None:
    spec = _spec(
        objectives=[{"name": "a", "direction": "maximize"}, {"name": "b", "direction": "minimize"}],
        sampler={"type": "NSGAII"},
    )
    assert directions(spec) == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]


def test_param_env() -> None:
    assert param_env_name("batch-size.v2") == "KUBETUNE_PARAM_BATCH_SIZE_V2"
    env = param_env({"lr": 0.01, "optimizer": "sgd", "bs": 64, "nesterov": True})
    assert env["KUBETUNE_PARAM_LR"] == "0.01"
    assert env["KUBETUNE_PARAM_OPTIMIZER"] == "sgd"
    assert env["KUBETUNE_PARAM_NESTEROV"] == "true"
    assert json.loads(env["KUBETUNE_PARAMS"]) == {
        "lr": 0.01,
        "optimizer": "sgd",
        "bs": 64,
        "nesterov": True,
    }


def test_tpe_uses_constant_liar_when_parallel() -> None:
    spec = _spec(budget={"parallelism": 4})
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar


def test_grid_study_tells_the_last_point_under_ask_and_tell() -> None:
    """Optuna's GridSampler calls study.stop() when the grid is exhausted, which raises
    outside optimize() before the result is stored; ours must store every result."""
    from kubetune.search_space import space_size

    spec = _spec(
        sampler={"type": "Grid"},
        searchSpace=[{"name": "lr", "categorical": {"choices": [0.01, 0.1, 1.0]}}],
    )
    assert space_size(spec) == 3
    study = optuna.create_study(sampler=make_sampler(spec))
    for _ in range(3):
        t = study.ask()
        study.tell(t, suggest_params(t, spec)["lr"])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def _sampled(spec: TuningStudySpec, trials: int = 40) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions(spec))
    out = []
    for _ in range(trials):
        trial = study.ask()
        params = suggest_params(trial, spec)
        out.append(params)
        study.tell(trial, 0.0)
    return out


def test_int_parent_with_a_range_condition_as_optuna_users_write_it() -> None:
    """`n_layers = suggest_int(1, 3); if n_layers >= 2: suggest n_units_l2` (and l3 for 3)."""
    spec = _spec(
        sampler={"type": "Random", "seed": 3},
        searchSpace=[
            {"name": "n_layers", "int": {"low": 1, "high": 3}},
            {"name": "n_units_l1", "int": {"low": 4, "high": 128, "log": True}},
            {
                "name": "n_units_l2",
                "int": {"low": 4, "high": 128, "log": True},
                "when": {"param": "n_layers", "atLeast": 2},
            },
            {
                "name": "n_units_l3",
                "int": {"low": 4, "high": 128, "log": True},
                "when": {"param": "n_layers", "atLeast": 3},
            },
        ],
    )
    seen = set()
    for params in _sampled(spec):
        n = params["n_layers"]
        seen.add(n)
        assert [k for k in params if k.startswith("n_units")] == [
            f"n_units_l{i}" for i in range(1, n + 1)
        ], params  # present exactly for the layers that exist, in spec order
    assert seen == {1, 2, 3}


def test_int_parent_with_in_values_and_a_bounded_range() -> None:
    spec = _spec(
        sampler={"type": "Random", "seed": 5},
        searchSpace=[
            {"name": "depth", "int": {"low": 0, "high": 8, "step": 2}},
            {
                "name": "even",
                "float": {"low": 0, "high": 1},
                "when": {"param": "depth", "in": [2, 6]},
            },
            {
                "name": "mid",
                "float": {"low": 0, "high": 1},
                "when": {"param": "depth", "atLeast": 3, "atMost": 6},
            },
        ],
    )
    for params in _sampled(spec):
        d = params["depth"]
        assert ("even" in params) == (d in (2, 6))
        assert ("mid" in params) == (3 <= d <= 6)


def test_bool_parent_and_a_chain_of_conditions() -> None:
    """A boolean parameter is a categorical with choices [true, false]; a condition's parent
    may itself be conditional (then the child exists only when both hold)."""
    spec = _spec(
        sampler={"type": "Random", "seed": 7},
        searchSpace=[
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
            {
                "name": "nesterov",
                "categorical": {"choices": [True, False]},
                "when": {"param": "optimizer", "in": ["sgd"]},
            },
            {
                "name": "momentum",
                "float": {"low": 0.5, "high": 0.99},
                "when": {"param": "nesterov", "in": [True]},
            },
        ],
    )
    combos = set()
    for params in _sampled(spec, 60):
        combos.add((params["optimizer"], params.get("nesterov"), "momentum" in params))
    assert combos == {("adam", None, False), ("sgd", False, False), ("sgd", True, True)}


def test_an_enqueued_trial_leaves_inactive_parameters_out() -> None:
    spec = _spec(
        searchSpace=[
            {"name": "n_layers", "int": {"low": 1, "high": 3}},
            {
                "name": "n_units_l2",
                "int": {"low": 4, "high": 64},
                "when": {"param": "n_layers", "atLeast": 2},
            },
        ],
    )
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions(spec))
    study.enqueue_trial({"n_layers": 1})
    study.enqueue_trial({"n_layers": 2, "n_units_l2": 16})
    assert suggest_params(study.ask(), spec) == {"n_layers": 1}
    assert suggest_params(study.ask(), spec) == {"n_layers": 2, "n_units_l2": 16}
