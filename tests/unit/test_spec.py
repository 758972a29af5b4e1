"""The spec model and the generated CRD agree, and bad manifests give clear errors."""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.spec import SpecError, When, load_manifest, parse_manifest
from support.crd_check import (
    BAD_EDITS,
    DELETE,
    GOOD_EDITS,
    BadEdit,
    crd_errors,
    edited,
    good_manifest,
    study_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(glob.glob(str(ROOT / "examples" / "*.yaml")))


def test_examples_exist_and_cover_the_cases() -> None:
    names = {Path(e).name for e in EXAMPLES}
    assert {
        "quickstart.yaml",
        "gpu-cnn-study.yaml",
        "multi-objective.yaml",
        "grid.yaml",
        "conditional.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).name)
def test_every_example_validates_in_model_and_crd(path: str) -> None:
    ts = load_manifest(path)
    raw = yaml.safe_load(Path(path).read_text())
    assert crd_errors(raw) == []
    # Round trip: the model's manifest is accepted by the CRD and parses back to the same model.
    again = parse_manifest(ts.to_manifest())
    assert again == ts
    assert crd_errors(ts.to_manifest()) == []


def test_seed_parameters_are_expressible() -> None:
    ts = load_manifest(ROOT / "examples" / "gpu-cnn-study.yaml")
    names = {p.name for p in ts.spec.search_space}
    assert {"lr", "batch_size", "optimizer", "momentum", "weight_decay", "dropout"} <= names
    momentum = next(p for p in ts.spec.search_space if p.name == "momentum")
    assert momentum.when is not None and list(momentum.when.in_) == ["sgd"]
    assert ts.spec.trial.gpus() == 1.0


@pytest.mark.parametrize("case", BAD_EDITS, ids=lambda c: c.id)
def test_bad_manifest_gives_clear_error_and_crd_agrees(case: BadEdit) -> None:
    doc = case.apply(study_manifest())
    with pytest.raises(SpecError) as err:
        parse_manifest(doc)
    assert case.model_says in str(err.value)
    assert "Traceback" not in str(err.value)
    # Where the schema or a CEL rule can express the rule, the API server refuses it too;
    # the rest is refused by the operator with an Invalid condition.
    errors = crd_errors(doc)
    assert bool(errors) is (case.server_field is not None), errors


def test_multi_objective_rules() -> None:
    doc = study_manifest()
    doc["spec"]["objectives"].append({"name": "seconds", "direction": "minimize"})
    with pytest.raises(SpecError, match="single objective"):
        parse_manifest(doc)
    assert crd_errors(doc)
    doc["spec"]["pruner"] = {"type": "None"}
    doc["spec"]["sampler"] = {"type": "CmaEs"}
    with pytest.raises(SpecError, match="CmaEs"):
        parse_manifest(doc)
    assert crd_errors(doc)
    doc["spec"]["sampler"] = {"type": "NSGAII", "populationSize": 4}
    parse_manifest(doc)
    assert crd_errors(doc) == []


def test_grid_needs_finite_space() -> None:
    doc = edited(study_manifest(), "spec.sampler", {"type": "Grid"})
    with pytest.raises(SpecError, match="finite space"):
        parse_manifest(doc)
    assert any("finite space" in e for e in crd_errors(doc))
    doc = edited(doc, "spec.searchSpace.0.float", {"low": 0.1, "high": 0.5, "step": 0.1})
    doc = edited(doc, "spec.searchSpace.2.float", {"low": 0.0, "high": 0.9, "step": 0.3})
    parse_manifest(doc)
    assert crd_errors(doc) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "- a list",
        "a: &x [1]\nb: *x\n",
        "{{{{",
        "apiVersion: kubetune.io/v1alpha1\nkind: TuningStudy\n",
        "kind: TuningStudy\n---\nkind: TuningStudy\n",
        "[" * 5000,
    ],
    ids=["empty", "list", "alias", "broken", "no-spec", "two-studies", "deep"],
)
def test_garbage_yaml_gives_spec_error(text: str) -> None:
    with pytest.raises(SpecError):
        load_manifest(text + "\n")


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="No such file"):
        load_manifest(tmp_path / "nope.yaml")


# --- Hypothesis: hostile manifests give a SpecError or a valid study, never anything else ---

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_paths = st.sampled_from(
    [
        "spec.searchSpace.0.float.low",
        "spec.searchSpace.0.float.high",
        "spec.searchSpace.0.float.log",
        "spec.searchSpace.0.float.step",
        "spec.searchSpace.0.name",
        "spec.searchSpace.1.categorical.choices",
        "spec.searchSpace.2.when",
        "spec.searchSpace.2.when.in",
        "spec.searchSpace.0",
        "spec.sampler",
        "spec.sampler.type",
        "spec.pruner",
        "spec.budget",
        "spec.budget.parallelism",
        "spec.objectives",
        "spec.objectives.0.direction",
        "spec.enqueueTrials",
        "spec.trial",
        "spec.trial.template",
        "spec.trial.maxRetries",
        "metadata.name",
        "spec",
    ]
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(edits=st.lists(st.tuples(_paths, _json), min_size=1, max_size=3))
def test_hostile_manifests_never_raise_anything_but_spec_error(
    edits: list[tuple[str, Any]],
) -> None:
    doc: Any = study_manifest()
    for path, value in edits:
        try:
            doc = edited(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the parent: keep what we have
    try:
        ts = parse_manifest(doc)
    except SpecError as e:
        assert str(e).strip()
        return
    # Whatever the model accepts, the API server must accept too.
    assert crd_errors(ts.to_manifest()) == []


@settings(max_examples=150, deadline=None)
@given(
    low=st.floats(allow_nan=True, allow_infinity=True),
    high=st.floats(allow_nan=True, allow_infinity=True),
    log=st.booleans(),
)
def test_float_ranges_model_and_crd_agree(low: float, high: float, log: bool) -> None:
    doc = edited(
        study_manifest(), "spec.searchSpace.0.float", {"low": low, "high": high, "log": log}
    )
    try:
        parse_manifest(doc)
        model_ok = True
    except SpecError:
        model_ok = False
    import math

    if math.isfinite(low) and math.isfinite(high):
        assert model_ok == (not crd_errors(doc))
    else:
        assert not model_ok


@pytest.mark.parametrize("edit_id", sorted(GOOD_EDITS))
def test_edges_of_the_rules_are_valid_in_model_and_crd(edit_id: str) -> None:
    doc = good_manifest(edit_id)
    parse_manifest(doc)
    assert crd_errors(doc) == []


def _updated(old: dict[str, Any], path: str, value: Any) -> list[str]:
    return crd_errors(edited(old, path, value), old=old)


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("spec.searchSpace.0.float.high", 0.5, "searchSpace cannot change"),
        ("spec.objectives.0.direction", "minimize", "objectives cannot change"),
        ("spec.sampler.seed", 2, "sampler cannot change"),
        ("spec.sampler", DELETE, "sampler cannot change"),
        ("spec.pruner.type", "None", "pruner.type cannot change"),
        ("spec.pruner", DELETE, "pruner.type cannot change"),
        ("spec.trial.result", {"from": "TerminationMessage"}, "trial.result.from cannot change"),
    ],
)
def test_fields_fixed_at_creation_refuse_edits(path: str, value: Any, words: str) -> None:
    old = (
        edited(study_manifest(), "spec.pruner", {"type": "None"})
        if "result" in path
        else (study_manifest())
    )
    assert any(words in e for e in _updated(old, path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.budget.parallelism", 5),
        ("spec.budget.maxTrials", 100),
        ("spec.suspend", True),
        ("spec.pruner.nStartupTrials", 3),
        ("spec.pruner.type", "Median"),  # unchanged, spelled out again
        ("spec.enqueueTrials", [{"lr": 0.01}]),
        ("spec.trial.template.spec.containers.0.image", "img:2"),
    ],
)
def test_budget_suspend_and_the_rest_stay_editable(path: str, value: Any) -> None:
    assert _updated(study_manifest(), path, value) == []


def test_condition_describes_and_matches_its_values() -> None:
    ranged = When.model_validate({"param": "n", "atLeast": 2})
    assert ranged.describe() == "n >= 2"
    assert [ranged.matches(v) for v in (1, 2, 9, True, 2.0)] == [False, True, True, False, False]
    both = When.model_validate({"param": "n", "atLeast": 2, "atMost": 3})
    assert both.describe() == "2 <= n <= 3"
    assert When.model_validate({"param": "n", "atMost": 3}).describe() == "n <= 3"
    listed = When.model_validate({"param": "opt", "in": ["sgd", True]})
    assert listed.describe() == "opt in ['sgd', True]"
    assert [listed.matches(v) for v in ("sgd", True, 1, "adam")] == [True, True, False, False]


def test_gp_is_refused_with_a_clear_sentence_where_torch_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubetune.sampling import SamplerUnavailableError, make_sampler, sampler_unavailable

    gp = parse_manifest(edited(study_manifest(), "spec.sampler", {"type": "GP"})).spec
    tpe = parse_manifest(study_manifest()).spec
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees without torch
    why = sampler_unavailable(gp, where="the operator image")
    assert why is not None
    assert why.startswith("the GP sampler needs PyTorch in the operator image")
    assert "384 MB to 1.13 GB" in why and "TPE" in why
    assert sampler_unavailable(tpe, where="the operator image") is None
    with pytest.raises(SamplerUnavailableError, match="needs PyTorch"):
        make_sampler(gp)


def test_objective_goal_is_a_finite_number_fixed_at_creation() -> None:
    doc = edited(study_manifest(), "spec.objectives.0.goal", 0.95)
    ts = parse_manifest(doc)
    assert ts.spec.objectives[0].goal == 0.95
    assert crd_errors(doc) == []
    assert parse_manifest(edited(doc, "spec.objectives.0.goal", 1)).spec.objectives[0].goal == 1
    for bad in ("high", float("nan"), True):
        with pytest.raises(SpecError, match="goal"):
            parse_manifest(edited(doc, "spec.objectives.0.goal", bad))
    assert crd_errors(edited(doc, "spec.objectives.0.goal", "high"))
    # Part of the objectives, which are fixed at creation (in the spec hash too).
    assert crd_errors(edited(doc, "spec.objectives.0.goal", 0.9), old=doc)
    assert "goal" in ts.spec.immutable_view()["objectives"][0]
    # A study without a goal keeps the immutable view (and spec hash) it had before goals.
    assert "goal" not in parse_manifest(study_manifest()).spec.immutable_view()["objectives"][0]
