"""Checks a custom resource the way the API server would, without one: the CRD's structural
schema (jsonschema), list-map key uniqueness, and every CEL rule (cel-python, with the
Kubernetes library functions the rules use) at the node it is attached to.

A fast approximation for unit tests; the real kube-apiserver (tests/integration/
test_crd_apiserver.py) is the authority. Known gaps: cel-python sees untyped values (categorical
choices, when.in) that the API server hides from CEL, and it estimates no cost.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

from kubetune.crd import open_api_schema
from support import manifests

_UNSET = object()


@functools.cache
def _schema() -> dict[str, Any]:
    return open_api_schema()


def _index_of(items: Any, value: Any) -> celtypes.IntType:
    return celtypes.IntType(next((i for i, x in enumerate(items) if x == value), -1))


#: The Kubernetes CEL library (lists, cel-go's strings extension) as far as the rules use it.
_FUNCTIONS = {
    "indexOf": _index_of,
    "upperAscii": lambda s: celtypes.StringType(s.upper()),
    "replace": lambda s, a, b: celtypes.StringType(s.replace(a, b)),
}


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_FUNCTIONS)


def _rule_errors(rule: dict[str, str], data: Any, old: Any, path: str) -> list[str]:
    transition = "oldSelf" in rule["rule"]
    if transition and old is _UNSET:
        return []  # transition rules run on updates only, when the old value exists too
    where = path + rule.get("fieldPath", "")
    bindings = {"self": celpy.json_to_cel(data)}
    if transition:
        bindings["oldSelf"] = celpy.json_to_cel(old)
    try:
        ok = _program(rule["rule"]).evaluate(bindings)
    except celpy.CELEvalError as e:  # the API server reports these as invalid too
        return [f"{where}: CEL error in {rule['rule']!r}: {e}"]
    return [] if bool(ok) else [f"{where}: {rule['message']}"]


def _map_key_errors(schema: dict[str, Any], data: Any, path: str) -> list[str]:
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(data, list):
        return []
    keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in data]
    dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    return [f"{path}: Duplicate value: {k}" for k in dupes]


def _unknown_fields(schema: dict[str, Any], data: Any, path: str) -> list[str]:
    """Fields the schema does not declare: kubectl asks for strict field validation, so the
    server refuses them (a client that does not ask has them pruned silently)."""
    errors: list[str] = []
    if isinstance(data, dict) and "properties" in schema:
        open_ = schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata"
        for key, value in data.items():
            sub = schema["properties"].get(key)
            if sub is None and not open_:
                errors.append(f'{path}: unknown field "{path[1:]}.{key}"')
            elif sub is not None:
                errors += _unknown_fields(sub, value, f"{path}.{key}")
    if isinstance(data, list) and "items" in schema:
        for i, item in enumerate(data):
            errors += _unknown_fields(schema["items"], item, f"{path}[{i}]")
    return errors


def _cel_errors(schema: dict[str, Any], data: Any, path: str, old: Any = _UNSET) -> list[str]:
    errors = _map_key_errors(schema, data, path)
    for rule in schema.get("x-kubernetes-validations", []):
        errors += _rule_errors(rule, data, old, path)
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                was = old.get(key, _UNSET) if isinstance(old, dict) else _UNSET
                errors += _cel_errors(sub, data[key], f"{path}.{key}", was)
    if isinstance(data, list) and "items" in schema:
        # Old list items are correlated by map key only (as the API server does).
        keys = schema.get("x-kubernetes-list-map-keys")
        before = {}
        if keys and isinstance(old, list):
            before = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(data):
            key = tuple(item.get(k) for k in keys) if keys and isinstance(item, dict) else None
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]", before.get(key, _UNSET))
    return errors


def crd_errors(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Everything the API server would refuse in this manifest (empty when it is accepted);
    with ``old``, as an update of that object (transition rules run)."""
    validator = jsonschema.Draft4Validator(_schema())
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    errors += _unknown_fields(_schema(), manifest, "")
    if errors:
        return errors
    return _cel_errors(_schema(), manifest, "", _UNSET if old is None else old)


# --- One manifest factory, and the bad edits both tiers (and the model) must refuse ----------

DELETE = object()


def study_manifest() -> dict[str, Any]:
    """A valid TuningStudy touching most of the spec: three parameters (one conditional on a
    categorical), TPE, a Median pruner, a budget and a one-container template."""
    return manifests.study_manifest(
        search_space=[
            {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}},
            {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
            {
                "name": "momentum",
                "float": {"low": 0.0, "high": 0.99},
                "when": {"param": "optimizer", "in": ["sgd"]},
            },
        ],
        sampler={"type": "TPE", "seed": 1},
        pruner={"type": "Median"},
        budget={"maxTrials": 10, "parallelism": 2},
        container={"name": "t", "image": "img", "args": ["--x"]},
    )


def edited(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` (list indexes as numbers) set to ``value``,
    or removed when ``value`` is ``DELETE``."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@dataclasses.dataclass(frozen=True)
class BadEdit:
    """An edit of ``study_manifest()`` that makes it invalid.

    ``model_says``: words of the model's message. ``server_field``: the field the API server
    names when it refuses the manifest; None where only the operator can tell (the study then
    turns Invalid), see docs/validation.md. ``server_says``: words of the server's message.
    """

    id: str
    edits: tuple[tuple[str, Any], ...]
    model_says: str
    server_field: str | None
    server_says: str = ""

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        for path, value in self.edits:
            doc = edited(doc, path, value)
        return doc


def _bad(  # noqa: PLR0917 - a row of the table below
    id: str, path: str, value: Any, model_says: str, field: str | None, says: str = ""
) -> BadEdit:
    return BadEdit(id, ((path, value),), model_says, field, says)


_INT_PARENT = ("spec.searchSpace.1", {"name": "optimizer", "int": {"low": 1, "high": 5, "step": 2}})
_SS = "spec.searchSpace"

BAD_EDITS: list[BadEdit] = [
    _bad(
        "low-not-below-high",
        f"{_SS}.0.float.low",
        1.0,
        "less than high",
        f"{_SS}[0].float",
        "low must be less than high",
    ),
    _bad(
        "log-with-nonpositive-low",
        f"{_SS}.0.float.low",
        -1.0,
        "log range",
        f"{_SS}[0].float",
        "a log range needs low > 0",
    ),
    _bad(
        "wrong-type-low",
        f"{_SS}.0.float.low",
        "small",
        "searchSpace[0].float.low",
        f"{_SS}[0].float.low",
        "must be of type number",
    ),
    _bad(
        "float-step-beyond-range",
        f"{_SS}.2.float",
        {"low": 0.0, "high": 0.5, "step": 0.6},
        "must not exceed high - low",
        f"{_SS}[2].float",
        "step must not exceed high - low",
    ),
    _bad(
        "int-step-beyond-range",
        f"{_SS}.0",
        {"name": "lr", "int": {"low": 1, "high": 3, "step": 5}},
        "must not exceed high - low",
        f"{_SS}[0].int",
        "step must not exceed high - low",
    ),
    _bad(
        "int-log-from-zero",
        f"{_SS}.0",
        {"name": "lr", "int": {"low": 0, "high": 9, "log": True}},
        "low >= 1",
        f"{_SS}[0].int",
        "a log range needs low >= 1",
    ),
    _bad(
        "int-beyond-json-precision",
        f"{_SS}.0",
        {"name": "lr", "int": {"low": 0, "high": 2**60}},
        "searchSpace[0].int.high",
        f"{_SS}[0].int.high",
        "less than or equal to",
    ),
    _bad(
        "empty-choices",
        f"{_SS}.1.categorical.choices",
        [],
        "at least 1",
        f"{_SS}[1].categorical.choices",
        "should have at least 1 items",
    ),
    _bad(
        "huge-choices",
        f"{_SS}.1.categorical.choices",
        list(range(1001)),
        "at most 1000",
        f"{_SS}[1].categorical.choices",
        "must have at most 1000 items",
    ),
    _bad("duplicate-choices", f"{_SS}.1.categorical.choices", ["a", "a"], "distinct", None),
    _bad(
        "two-kinds",
        f"{_SS}.0.int",
        {"low": 1, "high": 3},
        "exactly one",
        f"{_SS}[0]",
        "set exactly one of float, int or categorical",
    ),
    _bad(
        "no-kind",
        f"{_SS}.0.float",
        DELETE,
        "exactly one",
        f"{_SS}[0]",
        "set exactly one of float, int or categorical",
    ),
    _bad("duplicate-names", f"{_SS}.1.name", "lr", "used twice", f"{_SS}[1]", "Duplicate value"),
    _bad(
        "names-share-an-env-variable",
        f"{_SS}.1.name",
        "LR",
        "same environment variable",
        _SS,
        "distinct environment variables",
    ),
    _bad(
        "name-too-long",
        f"{_SS}.0.name",
        "x" * 64,
        "at most 63",
        f"{_SS}[0].name",
        "may not be more than 63",
    ),
    _bad(
        "unicode-param-name",
        f"{_SS}.0.name",
        "lérning_rate",
        "searchSpace[0].name",
        f"{_SS}[0].name",
        "should match",
    ),
    _bad(
        "when-missing-param",
        f"{_SS}.2.when.param",
        "nope",
        "earlier parameter",
        _SS,
        "when.param must name an earlier parameter",
    ),
    _bad(
        "when-names-itself",
        f"{_SS}.2.when.param",
        "momentum",
        "earlier parameter",
        _SS,
        "when.param must name an earlier parameter",
    ),
    BadEdit(
        "when-names-a-later-param",
        ((f"{_SS}.1.when", {"param": "momentum", "in": [0.5]}), (f"{_SS}.2.when", DELETE)),
        "earlier parameter",
        _SS,
        "when.param must name an earlier parameter",
    ),
    _bad(
        "when-float-parent",
        f"{_SS}.2.when",
        {"param": "lr", "in": [0.01]},
        "is a float parameter",
        _SS,
        "categorical or int parameter",
    ),
    _bad("when-value-not-a-choice", f"{_SS}.2.when.in", ["rmsprop"], "not choices", None),
    _bad("when-true-for-string-choices", f"{_SS}.2.when.in", [True], "not choices", None),
    _bad(
        "when-both-forms",
        f"{_SS}.2.when",
        {"param": "optimizer", "in": ["sgd"], "atLeast": 1},
        "not both",
        f"{_SS}[2].when",
        "oneOf",
    ),
    _bad(
        "when-no-form",
        f"{_SS}.2.when",
        {"param": "optimizer"},
        "give in",
        f"{_SS}[2].when",
        "oneOf",
    ),
    _bad(
        "when-range-on-categorical",
        f"{_SS}.2.when",
        {"param": "optimizer", "atLeast": 1},
        "need an int parent",
        _SS,
        "need an int parent",
    ),
    BadEdit(
        "when-int-range-inverted",
        (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "atLeast": 4, "atMost": 3})),
        "must not exceed atMost",
        f"{_SS}[2].when",
        "atLeast must not exceed atMost",
    ),
    BadEdit(
        "when-int-range-above-parent",
        (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "atLeast": 6})),
        "selects no value",
        _SS,
        "select no value",
    ),
    BadEdit(
        "when-int-range-between-steps",
        (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "atLeast": 2, "atMost": 2})),
        "selects no value",
        _SS,
        "select no value",
    ),
    BadEdit(
        "when-int-value-off-step",
        (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "in": [2]})),
        "not values of",
        None,
    ),
    BadEdit(
        "when-int-value-a-bool",
        (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "in": [True]})),
        "not values of",
        None,
    ),
    _bad(
        "unknown-sampler",
        "spec.sampler.type",
        "Bayes",
        "sampler.type",
        "spec.sampler.type",
        "Unsupported value",
    ),
    _bad(
        "option-of-other-sampler",
        "spec.sampler.populationSize",
        10,
        "does not apply",
        "spec.sampler",
        "populationSize applies only to the NSGAII sampler",
    ),
    _bad(
        "option-of-the-default-pruner",
        "spec.pruner",
        {"nWarmupSteps": 2},
        "does not apply",
        "spec.pruner",
        "nWarmupSteps applies only to",
    ),
    _bad(
        "grid-over-a-continuous-range",
        "spec.sampler",
        {"type": "Grid"},
        "finite space",
        "spec.searchSpace",
        "the Grid sampler needs a finite space",
    ),
    BadEdit(
        "grid-too-large",
        (
            ("spec.sampler", {"type": "Grid"}),
            ("spec.pruner", {"type": "None"}),
            (_SS, [{"name": "a", "int": {"low": 0, "high": 100_000}}]),
        ),
        "more than 100000",
        None,
    ),
    _bad(
        "unknown-pruner",
        "spec.pruner.type",
        "Magic",
        "pruner.type",
        "spec.pruner.type",
        "Unsupported value",
    ),
    _bad(
        "percentile-without-value",
        "spec.pruner",
        {"type": "Percentile"},
        "needs percentile",
        "spec.pruner",
        "the Percentile pruner needs percentile",
    ),
    _bad(
        "threshold-lower-above-upper",
        "spec.pruner",
        {"type": "Threshold", "lower": 2.0, "upper": 1.0},
        "must not exceed upper",
        "spec.pruner",
        "lower must not exceed upper",
    ),
    _bad(
        "hyperband-min-above-max",
        "spec.pruner",
        {"type": "Hyperband", "minResource": 9, "maxResource": 3},
        "minResource must not exceed",
        "spec.pruner",
        "minResource must not exceed maxResource",
    ),
    _bad(
        "pruning-with-termination-message",
        "spec.trial.result",
        {"from": "TerminationMessage"},
        "Reporter",
        "spec.trial",
        "pruning needs trial.result.from: Reporter",
    ),
    _bad(
        "missing-objectives",
        "spec.objectives",
        DELETE,
        "objectives",
        "spec.objectives",
        "Required value",
    ),
    _bad(
        "bad-direction",
        "spec.objectives.0.direction",
        "up",
        "direction",
        "spec.objectives[0].direction",
        "Unsupported value",
    ),
    _bad(
        "duplicate-objectives",
        "spec.objectives",
        [{"name": "a", "direction": "maximize"}, {"name": "a", "direction": "minimize"}],
        "unique",
        "spec.objectives[1]",
        "Duplicate value",
    ),
    BadEdit(
        "cmaes-with-two-objectives",
        (
            (
                "spec.objectives",
                [{"name": "a", "direction": "maximize"}, {"name": "b", "direction": "minimize"}],
            ),
            ("spec.pruner", {"type": "None"}),
            ("spec.sampler", {"type": "CmaEs"}),
        ),
        "CmaEs",
        "spec.sampler",
        "the CmaEs sampler is single-objective",
    ),
    _bad(
        "pruning-with-two-objectives",
        "spec.objectives",
        [{"name": "a", "direction": "maximize"}, {"name": "b", "direction": "minimize"}],
        "single objective",
        "spec.pruner",
        "pruning works with a single objective only",
    ),
    _bad(
        "zero-parallelism",
        "spec.budget.parallelism",
        0,
        "budget.parallelism",
        "spec.budget.parallelism",
        "should be greater than or equal to 1",
    ),
    _bad(
        "heartbeat-timeout-too-short",
        "spec.trial.heartbeatTimeoutSeconds",
        5,
        "trial.heartbeatTimeoutSeconds",
        "spec.trial.heartbeatTimeoutSeconds",
        "should be greater than or equal to 15",
    ),
    BadEdit(
        "heartbeat-timeout-with-termination-message",
        (
            ("spec.pruner", DELETE),
            ("spec.trial.result", {"from": "TerminationMessage"}),
            ("spec.trial.heartbeatTimeoutSeconds", 60),
        ),
        "heartbeatTimeoutSeconds needs trial.result.from: Reporter",
        "spec.trial",
        "heartbeatTimeoutSeconds needs trial.result.from: Reporter",
    ),
    _bad(
        "negative-trials",
        "spec.budget.maxTrials",
        -5,
        "budget.maxTrials",
        "spec.budget.maxTrials",
        "should be greater than or equal to 1",
    ),
    _bad(
        "ttl-beyond-int32",
        "spec.trial.ttlSecondsAfterFinished",
        2**31,
        "ttlSecondsAfterFinished",
        "spec.trial.ttlSecondsAfterFinished",
        "less than or equal to",
    ),
    _bad(
        "no-containers", "spec.trial.template.spec.containers", [], "at least one container", None
    ),
    _bad(
        "no-template",
        "spec.trial.template",
        DELETE,
        "template",
        "spec.trial.template",
        "Required value",
    ),
    _bad("unknown-field", "spec.colour", "blue", "colour", "spec.colour", "unknown field"),
    _bad("bad-name", "metadata.name", "Not_A_Name", "DNS-1123", "metadata.name"),
    _bad("enqueue-unknown-param", "spec.enqueueTrials", [{"depth": 3}], "unknown parameters", None),
    _bad("enqueue-out-of-range", "spec.enqueueTrials", [{"lr": 5.0}], "outside its range", None),
]


#: Edits of ``study_manifest()`` that stay valid, near the edges of the rules above.
GOOD_EDITS: dict[str, tuple[tuple[str, Any], ...]] = {
    "sampler-options-with-the-default-type": (
        ("spec.sampler", {"multivariate": True, "group": True}),
    ),
    "empty-sampler-and-pruner": (("spec.sampler", {}), ("spec.pruner", {})),
    "no-sampler-pruner-or-budget": (
        ("spec.sampler", DELETE),
        ("spec.pruner", DELETE),
        ("spec.budget", DELETE),
    ),
    "pruner-options-with-their-type": (
        ("spec.pruner", {"type": "Percentile", "percentile": 25.0, "nWarmupSteps": 2}),
    ),
    "threshold-with-equal-bounds": (
        ("spec.pruner", {"type": "Threshold", "lower": 1.0, "upper": 1.0}),
    ),
    "float-step-equal-to-the-range": ((f"{_SS}.2.float", {"low": 0.0, "high": 0.5, "step": 0.5}),),
    "mixed-type-choices": ((f"{_SS}.1.categorical.choices", ["sgd", 1, "1", 1.5, True]),),
    "int-parent-at-least": (
        (f"{_SS}.1", {"name": "optimizer", "int": {"low": 1, "high": 3}}),
        (f"{_SS}.2.when", {"param": "optimizer", "atLeast": 2}),
    ),
    "int-parent-at-most-below-its-low-step": (
        _INT_PARENT,
        (f"{_SS}.2.when", {"param": "optimizer", "atMost": 1}),
    ),
    "int-parent-range-holding-one-step": (
        _INT_PARENT,
        (f"{_SS}.2.when", {"param": "optimizer", "atLeast": 2, "atMost": 3}),
    ),
    "int-parent-in-values": (_INT_PARENT, (f"{_SS}.2.when", {"param": "optimizer", "in": [3, 5]})),
    "bool-parent": (
        (f"{_SS}.1", {"name": "optimizer", "categorical": {"choices": [True, False]}}),
        (f"{_SS}.2.when", {"param": "optimizer", "in": [True]}),
    ),
    "grid-at-the-size-cap": (
        ("spec.sampler", {"type": "Grid"}),
        (_SS, [{"name": "a", "int": {"low": 0, "high": 99_999}}]),
    ),
    "names-at-the-length-cap": ((f"{_SS}.0.name", "L" * 63),),
    "heartbeat-timeout-at-its-bounds": (("spec.trial.heartbeatTimeoutSeconds", 15),),
}


def good_manifest(edit_id: str) -> dict[str, Any]:
    doc = study_manifest()
    for path, value in GOOD_EDITS[edit_id]:
        doc = edited(doc, path, value)
    return doc


# --- The API server's own cost estimate, read back from a probe CRD -------------------------

#: kube-apiserver's limit on the estimated cost of all rules of one CRD (apiextensions
#: StaticEstimatedCRDCostLimit); one rule alone may cost at most a tenth of it.
CRD_COST_LIMIT = 100_000_000
RULE_COST_LIMIT = 10_000_000
_FACTOR = re.compile(
    r"estimated rule cost total for entire OpenAPIv3 schema exceeds budget "
    r"by factor of ([0-9.]+)x"
)


def _probe_crd(schema: dict[str, Any], copies: int) -> dict[str, Any]:
    """A CRD whose spec is a map of ``copies`` values of ``schema``: every rule in it then
    counts ``copies`` times (a map keeps transition rules correlatable, a list would not)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "costprobes.probe.kubetune.io"},
        "spec": {
            "group": "probe.kubetune.io",
            "scope": "Namespaced",
            "names": {"kind": "CostProbe", "plural": "costprobes", "singular": "costprobe"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "maxProperties": copies,
                                    "additionalProperties": schema,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def estimated_cost(dry_run_apply: Callable[[dict[str, Any]], str], schema: dict[str, Any]) -> int:
    """The API server's estimated cost of all CEL rules in ``schema`` (rule cost times how
    often it can run), measured by scaling a probe CRD until the server reports by what factor
    it exceeds the limit. ``dry_run_apply`` server-dry-runs a manifest and returns the error
    text ('' when accepted)."""
    copies = 1
    while True:
        answer = dry_run_apply(_probe_crd(schema, copies))
        assert "more than 100x" not in answer, f"one copy already exceeds the budget: {answer}"
        found = _FACTOR.search(answer)
        if found:
            break
        if copies > 10**15:
            return 0  # no rules at all
        copies *= 10
    # Now 1 < factor <= ~10 (one decimal); scale to a factor near 90 for three digits.
    factor = float(found.group(1))
    copies = max(copies, int(copies * 90 / factor))
    found = _FACTOR.search(dry_run_apply(_probe_crd(schema, copies)))
    assert found, "the probe stopped exceeding the budget when scaled up"
    return round(float(found.group(1)) * CRD_COST_LIMIT / copies)
