"""The TuningStudy CRD against a real kube-apiserver v1.32: the authority on what installs and
what it refuses (cel-python in tests/unit is only a fast approximation).

- the generated CRD installs with ``kubectl apply --server-side`` and the server stores exactly
  the schema we generated (the chart's copy too);
- every example passes a server dry run; each hand-written bad manifest is refused by the server
  itself, naming the field, or (where only the operator can tell) accepted, as documented;
- fields fixed at creation refuse edits, budget/parallelism/suspend do not;
- whatever the spec model accepts, the server accepts (Hypothesis, dryRun=All);
- the CEL rules' estimated cost, as the server computes it, leaves headroom in the budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic.alias_generators import to_camel

from harness.control_plane import ControlPlane
from kubetune import spec as s
from kubetune.crd import crd_manifest, open_api_schema
from kubetune.spec import SpecError, parse_manifest
from support.crd_check import (
    BAD_EDITS,
    CRD_COST_LIMIT,
    DELETE,
    GOOD_EDITS,
    BadEdit,
    edited,
    estimated_cost,
    good_manifest,
    study_manifest,
)

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "kubetune.io_tuningstudies.yaml"
CHART_CRD_FILE = REPO / "charts" / "kubetune" / "crds" / "kubetune.io_tuningstudies.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CRD_NAME = f"{s.PLURAL}.{s.GROUP}"
NS = "crd-checks"


def _apply(plane: ControlPlane, doc: dict[str, Any], *flags: str) -> tuple[bool, str]:
    """``kubectl apply`` (strict field validation, as users run it): whether the server
    accepted ``doc``, and what kubectl printed."""
    out = plane.kubectl("apply", "-n", NS, *flags, "-f", "-", check=False, input=json.dumps(doc))
    refused = ("Error from server", "is invalid", "error:")
    return not any(r in out for r in refused), out


def _dry_run(plane: ControlPlane, doc: dict[str, Any]) -> tuple[bool, str]:
    return _apply(plane, doc, "--dry-run=server")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The session's control plane with the committed CRD installed and a namespace to use."""
    out = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    assert "serverside-applied" in out
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=300s"
    )
    control_plane.kubectl("create", "namespace", NS, check=False)
    yield control_plane
    control_plane.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def custom_objects(plane: ControlPlane) -> Iterator[Any]:
    import kubernetes

    client = plane.client()
    yield kubernetes.client.CustomObjectsApi(client)
    client.close()


def _stored_crd(plane: ControlPlane) -> dict[str, Any]:
    crd: dict[str, Any] = json.loads(plane.kubectl("get", "crd", CRD_NAME, "-o", "json"))
    return crd


def test_the_crd_installs_and_the_server_stores_the_schema_we_generated(
    plane: ControlPlane,
) -> None:
    stored = _stored_crd(plane)
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    (version,) = stored["spec"]["versions"]
    assert version["schema"]["openAPIV3Schema"] == open_api_schema()
    generated = crd_manifest()["spec"]
    assert (
        version["additionalPrinterColumns"] == generated["versions"][0]["additionalPrinterColumns"]
    )
    assert version["subresources"] == {"status": {}}
    assert stored["spec"]["names"] == generated["names"]


def test_the_charts_copy_is_the_same_crd(plane: ControlPlane) -> None:
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes()
    chart_crd = yaml.safe_load(CHART_CRD_FILE.read_text())
    out = plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-o", "json", "-f", str(CHART_CRD_FILE)
    )
    answered = json.loads(out)
    assert (
        answered["spec"]["versions"][0]["schema"]
        == chart_crd["spec"]["versions"][0]["schema"]
        == _stored_crd(plane)["spec"]["versions"][0]["schema"]
    )


def test_the_rules_leave_headroom_in_the_cost_budget(plane: ControlPlane) -> None:
    """The server refuses a CRD whose rules' estimated cost (per rule, times how often it can
    run) exceeds 100M; keep ours under a tenth so new rules have room."""

    def dry_run_apply(doc: dict[str, Any]) -> str:
        out = plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
            check=False,
            input=json.dumps(doc),
        )
        return out if "invalid" in out else ""

    cost = estimated_cost(dry_run_apply, open_api_schema())
    print(f"estimated CEL cost of the TuningStudy CRD: {cost:,} of {CRD_COST_LIMIT:,}")
    assert 0 < cost < CRD_COST_LIMIT // 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_a_server_dry_run(plane: ControlPlane, path: Path) -> None:
    out = plane.kubectl("apply", "--dry-run=server", "-n", NS, "-f", str(path))
    assert "(server dry run)" in out


@pytest.mark.parametrize("edit_id", sorted(GOOD_EDITS))
def test_edges_of_the_rules_are_accepted(plane: ControlPlane, edit_id: str) -> None:
    accepted, out = _dry_run(plane, good_manifest(edit_id))
    assert accepted, out


@pytest.mark.parametrize("case", BAD_EDITS, ids=lambda c: c.id)
def test_bad_manifests_are_refused_by_the_server_naming_the_field(
    plane: ControlPlane, case: BadEdit
) -> None:
    doc = case.apply(study_manifest())
    with pytest.raises(SpecError):
        parse_manifest(doc)  # the model refuses every one of them
    accepted, out = _dry_run(plane, doc)
    if case.server_field is None:
        # Only the operator can tell (docs/validation.md): the study turns Invalid instead.
        assert accepted, out
        return
    assert not accepted, f"the server accepted {case.id}"
    assert case.server_field in out, out
    assert case.server_says in out, out


# --- Fields fixed at creation ---------------------------------------------------------------


def _created(plane: ControlPlane, name: str, doc: dict[str, Any]) -> dict[str, Any]:
    doc = edited(doc, "metadata.name", name)
    plane.kubectl("delete", s.PLURAL, name, "-n", NS, "--ignore-not-found", "--wait=true")
    accepted, out = _apply(plane, doc, "--server-side")
    assert accepted, out
    return doc


IMMUTABLE_EDITS = [
    ("search-space", "spec.searchSpace.0.float.high", 0.5, "spec.searchSpace", "searchSpace"),
    (
        "new-parameter",
        "spec.searchSpace",
        [*study_manifest()["spec"]["searchSpace"], {"name": "wd", "float": {"low": 0, "high": 1}}],
        "spec.searchSpace",
        "searchSpace",
    ),
    ("objective", "spec.objectives.0.direction", "minimize", "spec.objectives", "objectives"),
    ("sampler-type", "spec.sampler.type", "Random", "spec.sampler", "sampler"),
    ("sampler-seed", "spec.sampler.seed", 2, "spec.sampler", "sampler"),
    ("sampler-removed", "spec.sampler", DELETE, "spec.sampler", "sampler"),
    ("pruner-type", "spec.pruner.type", "Hyperband", "spec.pruner", "pruner.type"),
    ("pruner-removed", "spec.pruner", DELETE, "spec.pruner", "pruner.type"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [e[1:] for e in IMMUTABLE_EDITS],
    ids=[e[0] for e in IMMUTABLE_EDITS],
)
def test_an_edit_of_a_field_fixed_at_creation_is_refused(
    plane: ControlPlane, path: str, value: Any, field: str, words: str
) -> None:
    doc = _created(plane, "fixed", study_manifest())
    accepted, out = _apply(plane, edited(doc, path, value), "--server-side")
    assert not accepted, out
    assert f"{field}: Forbidden: {words} cannot change after creation" in out


def test_the_result_mode_is_fixed_at_creation(plane: ControlPlane) -> None:
    doc = _created(plane, "fixed-result", edited(study_manifest(), "spec.pruner", {"type": "None"}))
    edit = edited(doc, "spec.trial.result", {"from": "TerminationMessage"})
    accepted, out = _apply(plane, edit, "--server-side")
    assert not accepted, out
    assert "spec.trial: Forbidden: trial.result.from cannot change after creation" in out


def test_parallelism_budget_suspend_and_pruner_options_stay_editable(plane: ControlPlane) -> None:
    doc = _created(plane, "editable", study_manifest())
    for path, value in [
        ("spec.budget.parallelism", 7),
        ("spec.budget.maxTrials", 50),
        ("spec.suspend", True),
        ("spec.pruner.nWarmupSteps", 3),
        ("spec.trial.template.spec.containers.0.image", "img:2"),
    ]:
        doc = edited(doc, path, value)
        accepted, out = _apply(plane, doc, "--server-side")
        assert accepted, f"{path}: {out}"
    stored = json.loads(plane.kubectl("get", s.PLURAL, "editable", "-n", NS, "-o", "json"))
    assert stored["spec"]["budget"] == {"maxTrials": 50, "parallelism": 7}
    assert stored["spec"]["suspend"] is True


# --- Whatever the model accepts, the server accepts -----------------------------------------

# Mostly valid studies that sit on the edges (int bounds, tiny and huge floats, int values in
# float fields, long names, types left to their defaults, chained conditions), so that most
# draws reach the server; the model still has the last word on each.
_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_.-]{0,62}\Z")
_ints = st.one_of(st.integers(-5, 50), st.integers(-s.MAX_JSON_INT, s.MAX_JSON_INT - 100))
_floats = st.one_of(
    st.floats(-10, 10), st.floats(-1e300, 1e300), st.integers(-3, 3), st.just(5e-324)
)
_scalars = st.one_of(st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=6))


def _range(draw: Any, kind: str) -> dict[str, Any]:
    low = draw(_ints if kind == "int" else _floats)
    width = draw(st.integers(1, 100) if kind == "int" else st.sampled_from([1e-9, 0.5, 7, 1e200]))
    out: dict[str, Any] = {"low": low, "high": low + width}
    if low > 0 and draw(st.booleans()):
        out["log"] = True
    elif draw(st.booleans()):
        out["step"] = draw(st.integers(1, width) if kind == "int" else st.just(width / 4))
    return out


def _condition(draw: Any, parent: dict[str, Any]) -> dict[str, Any]:
    when: dict[str, Any] = {"param": parent["name"]}
    if "categorical" in parent:
        choices = parent["categorical"]["choices"]
        when["in"] = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=2))
        return when
    r = parent["int"]
    keys = draw(st.sampled_from([["atLeast"], ["atMost"], ["atLeast", "atMost"], ["in"]]))
    if keys == ["in"]:
        when["in"] = [r["low"]]
    for key in keys if keys != ["in"] else []:
        when[key] = draw(st.integers(r["low"], r["high"]))
    if when.get("atLeast", r["low"]) > when.get("atMost", r["high"]):
        when["atLeast"], when["atMost"] = when["atMost"], when["atLeast"]
    return when


def _env(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


@st.composite
def _parameter(draw: Any, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    name = draw(_names)
    if _env(name) in {_env(q["name"]) for q in earlier}:
        name = f"{name[:58]}_p{len(earlier)}"  # distinct, and still a valid name
    p: dict[str, Any] = {"name": name}
    kind = draw(st.sampled_from(["float", "int", "categorical"]))
    if kind == "categorical":
        p[kind] = {"choices": draw(st.lists(_scalars, min_size=1, max_size=4, unique_by=repr))}
    else:
        p[kind] = _range(draw, kind)
    parents = [q for q in earlier if "float" not in q]
    if parents and draw(st.booleans()):
        p["when"] = _condition(draw, draw(st.sampled_from(parents)))
    return p


_SAMPLER_VALUES = {
    "multivariate": st.booleans(),
    "group": st.booleans(),
    "constant_liar": st.booleans(),
    "with_margin": st.booleans(),
    "use_separable_cma": st.booleans(),
    "scramble": st.booleans(),
    "deterministic_objective": st.booleans(),
    "qmc_type": st.sampled_from(["sobol", "halton"]),
    "population_size": st.integers(2, 10_000),
    "mutation_prob": st.floats(0, 1),
    "crossover_prob": st.floats(0, 1),
    "swapping_prob": st.floats(0, 1),
    "n_startup_trials": st.integers(0, 10_000),
}
_PRUNER_VALUES = {
    "percentile": st.floats(0, 100),
    "min_delta": st.floats(0, 5),
    "lower": st.floats(-5, 0),
    "upper": st.floats(0, 5),
    "reduction_factor": st.integers(2, s.MAX_INT32),
    "min_resource": st.integers(1, 9),
    "max_resource": st.integers(9, s.MAX_INT32),
    "patience": st.integers(1, 9),
    "interval_steps": st.integers(1, 9),
    "n_warmup_steps": st.integers(0, s.MAX_INT32),
    "min_early_stopping_rate": st.integers(0, 5),
    "n_startup_trials": st.integers(0, 10_000),
}
_NEEDED = {"Percentile": {"percentile"}, "Patience": {"patience"}, "Threshold": {"lower"}}


def _options(
    draw: Any,
    kinds: list[str],
    table: dict[str, frozenset[str]],
    values: dict[str, Any],
    default: str,
) -> dict[str, Any]:
    kind = draw(st.sampled_from(kinds))
    out: dict[str, Any] = {} if kind == default and draw(st.booleans()) else {"type": kind}
    for option in sorted(table[kind]):
        if option in _NEEDED.get(kind, ()) or draw(st.booleans()):
            out[to_camel(option)] = draw(values[option])
    return out


@st.composite
def _studies(draw: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        params.append(draw(_parameter(params)))
    multi = draw(st.integers(0, 3)) == 0
    samplers = sorted(set(s.SAMPLER_OPTIONS) - {"Grid"} - ({"CmaEs"} if multi else set()))
    pruners = ["None"] if multi else sorted(s.PRUNER_OPTIONS)
    spec: dict[str, Any] = {
        "objectives": [
            {"name": f"m{i}", "direction": draw(st.sampled_from(["maximize", "minimize"]))}
            for i in range(2 if multi else 1)
        ],
        "searchSpace": params,
        "sampler": _options(draw, samplers, s.SAMPLER_OPTIONS, _SAMPLER_VALUES, "TPE"),
        "pruner": _options(draw, pruners, s.PRUNER_OPTIONS, _PRUNER_VALUES, "None"),
        "budget": {
            "maxTrials": draw(st.integers(1, 100_000)),
            "parallelism": draw(st.integers(1, 1000)),
        },
        "trial": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
    }
    if spec["pruner"].get("type", "None") == "None" and draw(st.booleans()):
        spec["trial"]["result"] = {"from": "TerminationMessage"}
    if draw(st.booleans()):
        first = params[0]
        value = (
            first["categorical"]["choices"][0]
            if "categorical" in first
            else (first.get("float", first.get("int"))["low"])
        )
        spec["enqueueTrials"] = [{first["name"]: value}]
    return {
        "apiVersion": s.API_VERSION,
        "kind": s.KIND,
        "metadata": {"name": "prop"},
        "spec": spec,
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(doc=_studies())
def test_whatever_the_model_accepts_the_server_accepts(
    plane: ControlPlane, custom_objects: Any, doc: dict[str, Any]
) -> None:
    try:
        study = parse_manifest(doc)
    except SpecError:
        assume(False)  # refused by the model: the server may do either; draw another
        raise
    for manifest in (doc, study.to_manifest()):
        custom_objects.create_namespaced_custom_object(
            s.GROUP,
            s.VERSION,
            NS,
            s.PLURAL,
            manifest,
            dry_run="All",
            field_validation="Strict",
        )
