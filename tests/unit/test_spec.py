"""The spec model and the generated CRD agree, and bad manifests give clear errors."""

from __future__ import annotations

import copy
import glob
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.spec import SpecError, load_manifest, parse_manifest
from support.crd_check import crd_errors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(glob.glob(str(ROOT / "examples" / "*.yaml")))


def _base() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "demo"},
        "spec": {
            "objectives": [{"name": "val_accuracy", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}},
                {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.99},
                    "when": {"param": "optimizer", "in": ["sgd"]},
                },
            ],
            "sampler": {"type": "TPE", "seed": 1},
            "pruner": {"type": "Median"},
            "budget": {"maxTrials": 10, "parallelism": 2},
            "trial": {
                "template": {
                    "spec": {"containers": [{"name": "t", "image": "img", "args": ["--x"]}]}
                }
            },
        },
    }


def test_examples_exist_and_cover_the_cases() -> None:
    names = {Path(e).name for e in EXAMPLES}
    assert {"quickstart.yaml", "gpu-cnn-study.yaml", "multi-objective.yaml", "grid.yaml"} <= names


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


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

# (id, path, value, words the model's message must contain, CRD also refuses it)
BAD_CASES: list[tuple[str, str, Any, str, bool]] = [
    ("low-not-below-high", "spec.searchSpace.0.float.low", 1.0, "less than high", True),
    ("log-with-nonpositive-low", "spec.searchSpace.0.float.low", -1.0, "log range", True),
    ("wrong-type-low", "spec.searchSpace.0.float.low", "small", "searchSpace[0].float.low", True),
    ("empty-choices", "spec.searchSpace.1.categorical.choices", [], "at least 1", True),
    ("duplicate-choices", "spec.searchSpace.1.categorical.choices", ["a", "a"], "distinct", False),
    ("unknown-sampler", "spec.sampler.type", "Bayes", "sampler.type", True),
    ("unknown-pruner", "spec.pruner.type", "Magic", "pruner.type", True),
    ("missing-objectives", "spec.objectives", _DELETE, "objectives", True),
    ("bad-direction", "spec.objectives.0.direction", "up", "direction", True),
    ("when-missing-param", "spec.searchSpace.2.when.param", "nope", "earlier parameter", True),
    ("when-value-not-a-choice", "spec.searchSpace.2.when.in", ["rmsprop"], "not choices", False),
    ("two-kinds", "spec.searchSpace.0.int", {"low": 1, "high": 3}, "exactly one", True),
    ("no-kind", "spec.searchSpace.0.float", _DELETE, "exactly one", True),
    ("duplicate-names", "spec.searchSpace.1.name", "lr", "used twice", True),
    ("zero-parallelism", "spec.budget.parallelism", 0, "budget.parallelism", True),
    ("negative-trials", "spec.budget.maxTrials", -5, "budget.maxTrials", True),
    ("no-containers", "spec.trial.template.spec.containers", [], "at least one container", False),
    ("no-template", "spec.trial.template", _DELETE, "template", True),
    ("unknown-field", "spec.colour", "blue", "colour", False),
    ("bad-name", "metadata.name", "Not_A_Name", "DNS-1123", True),
    ("unicode-param-name", "spec.searchSpace.0.name", "lérning_rate", "searchSpace[0].name", True),
    ("option-of-other-sampler", "spec.sampler.populationSize", 10, "does not apply", True),
    (
        "pruning-with-termination-message",
        "spec.trial.result",
        {"from": "TerminationMessage"},
        "Reporter",
        True,
    ),
    (
        "int-log-from-zero",
        "spec.searchSpace.0",
        {"name": "lr", "int": {"low": 0, "high": 9, "log": True}},
        "low >= 1",
        True,
    ),
    ("percentile-without-value", "spec.pruner", {"type": "Percentile"}, "needs percentile", True),
    ("enqueue-unknown-param", "spec.enqueueTrials", [{"depth": 3}], "unknown parameters", False),
    ("enqueue-out-of-range", "spec.enqueueTrials", [{"lr": 5.0}], "outside its range", False),
    (
        "huge-choices",
        "spec.searchSpace.1.categorical.choices",
        list(range(5000)),
        "at most 1000",
        True,
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "words", "crd_refuses"),
    [c[1:] for c in BAD_CASES],
    ids=[c[0] for c in BAD_CASES],
)
def test_bad_manifest_gives_clear_error_and_crd_agrees(
    path: str, value: Any, words: str, crd_refuses: bool
) -> None:
    doc = _set(_base(), path, value)
    with pytest.raises(SpecError) as err:
        parse_manifest(doc)
    assert words in str(err.value)
    assert "Traceback" not in str(err.value)
    # Where the schema or a CEL rule can express the rule, the API server refuses it too;
    # the rest is refused by the operator with an Invalid condition.
    assert bool(crd_errors(doc)) is crd_refuses


def test_multi_objective_rules() -> None:
    doc = _base()
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
    doc = _set(_base(), "spec.sampler", {"type": "Grid"})
    with pytest.raises(SpecError, match="finite space"):
        parse_manifest(doc)
    assert any("finite space" in e for e in crd_errors(doc))
    doc = _set(doc, "spec.searchSpace.0.float", {"low": 0.1, "high": 0.5, "step": 0.1})
    doc = _set(doc, "spec.searchSpace.2.float", {"low": 0.0, "high": 0.9, "step": 0.3})
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
    doc: Any = _base()
    for path, value in edits:
        try:
            doc = _set(doc, path, value)
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
    doc = _set(_base(), "spec.searchSpace.0.float", {"low": low, "high": high, "log": log})
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
