"""The TuningStudy API (group ``kubetune.io``, version ``v1alpha1``).

This pydantic model is the single source of truth: the CRD in ``crds/`` is generated from it
(``kubetune crd``), the operator and the local runner validate manifests with it, and
``kubectl explain`` shows the field descriptions written here. Cross-field rules live twice on
purpose: as model validators (precise messages, used everywhere) and as CEL
``x-kubernetes-validations`` (so the API server refuses a bad study before the operator sees it).
Tests check that both agree, against a real kube-apiserver too.

Whatever the model accepts, the API server must accept: every bound the CRD declares comes from
a ``Field`` here. A few checks are the model's alone because CEL cannot see the values (mixed-type
choices, ``when.in``, warm starts, the pod template) or cannot compute them (the Grid's size);
docs/validation.md lists them, the fields fixed at creation, and the CEL cost budget.

The model lives in one module per part of the API (``_space``, ``_strategy``, ``_trial``,
``_study``, ``_status``, ``_load``); import it from here.
"""

from __future__ import annotations

from kubetune.spec._base import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_CHOICES,
    MAX_ENQUEUED,
    MAX_GRID_POINTS,
    MAX_INT32,
    MAX_JSON_INT,
    MAX_MANIFEST_BYTES,
    MAX_NAME_LENGTH,
    MAX_OBJECTIVES,
    MAX_PARAMETERS,
    OBJECT_NAME_RE,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    PrunerType,
    ResultSource,
    Rule,
    SamplerType,
    Scalar,
    SpecError,
)
from kubetune.spec._load import (
    load_manifest,
    parse_manifest,
)
from kubetune.spec._space import (
    Categorical,
    FloatRange,
    IntRange,
    Objective,
    Parameter,
    When,
)
from kubetune.spec._status import (
    Condition,
    GpuSeconds,
    ObjectMeta,
    TrialCounts,
    TrialSummary,
    TuningStudy,
    TuningStudyStatus,
)
from kubetune.spec._strategy import (
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    Pruner,
    Sampler,
)
from kubetune.spec._study import (
    TuningStudySpec,
)
from kubetune.spec._trial import (
    Budget,
    ResultSpec,
    TrialSpec,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "MAX_CHOICES",
    "MAX_ENQUEUED",
    "MAX_GRID_POINTS",
    "MAX_INT32",
    "MAX_JSON_INT",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_OBJECTIVES",
    "MAX_PARAMETERS",
    "OBJECT_NAME_RE",
    "PLURAL",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "Budget",
    "Categorical",
    "Condition",
    "FloatRange",
    "GpuSeconds",
    "IntRange",
    "ObjectMeta",
    "Objective",
    "Parameter",
    "Pruner",
    "PrunerType",
    "ResultSource",
    "ResultSpec",
    "Rule",
    "Sampler",
    "SamplerType",
    "Scalar",
    "SpecError",
    "TrialCounts",
    "TrialSpec",
    "TrialSummary",
    "TuningStudy",
    "TuningStudySpec",
    "TuningStudyStatus",
    "When",
    "load_manifest",
    "parse_manifest",
]
