"""What a reconcile pass sees: the study's spec, its Jobs and Pods from kopf's indexes, the Jobs
created but not yet seen, and the log tails of failed trainers.

The indexes hold slim copies (:func:`~kubetune.observed_job.slim_job`, ``slim_pod``) of every
trial Job and Pod; this module says how kopf watches them (:func:`configure_watching`) and turns
them into the core's :class:`~kubetune.observed_job.ObservedJob` values and the
controller-runtime style expectations (:class:`~kubetune.reconcile.ExpectedJob`) the pure
decision takes as input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from kubetune.jobs import LABEL_STUDY, LABEL_TRIAL
from kubetune.observed_job import ObservedJob, observe_job
from kubetune.reconcile import ExpectedJob
from kubetune.runtime import ObservedMemo, Runtime, StudyState
from kubetune.spec import TuningStudy, TuningStudySpec, parse_manifest
from kubetune.status import LedgerSnapshot

__all__ = [
    "EXPECTATION_SECONDS",
    "LIST_CHUNK_SIZE",
    "ChildIndex",
    "Observed",
    "configure_watching",
    "observe_children",
    "parse_body",
    "with_log_tails",
]

#: kopf's index of trial Jobs or Pods: (namespace, study label) -> slim bodies.
ChildIndex = kopf.Index[tuple[str, str], dict[str, Any]]

#: How long kopf's "seen" mark of a Job is kept (and the default wait for an expected Job).
EXPECTATION_SECONDS = 60.0

#: Objects per page when kopf lists Jobs and Pods (at start, and again whenever a watch fell so
#: far behind that its resourceVersion expired): unpaged, one list of 5,000-10,000 Jobs grew
#: the operator by 136 MiB in 30 s (benchmarks/README.md, scale).
LIST_CHUNK_SIZE = 500


def configure_watching(settings: kopf.OperatorSettings) -> None:
    """Page kopf's lists, and have the apiserver send only trial Jobs and Pods.

    The handlers' ``labels=`` filter is applied by kopf after it has received, parsed and
    remembered (a per-object record, ~1 KiB) every Job and Pod of the cluster; the label
    selector keeps the others off the wire. Only the child watches get it: the TuningStudy
    watch must see every study.
    """
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    for group, plural in (("batch", "jobs"), ("", "pods")):
        settings.watching.label_selectors[group, "v1", plural] = LABEL_STUDY


def parse_body(body: Mapping[str, Any]) -> TuningStudy:
    """The TuningStudy as the model reads it (raises :class:`~kubetune.spec.SpecError`).

    A spec that is not an object (possible where no schema guards the API) is passed on as is,
    so that it becomes a clear validation error, not a crash of the reconcile.
    """
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    raw = {} if spec is None else dict(spec) if isinstance(spec, Mapping) else spec
    return parse_manifest(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": raw,
        }
    )


@dataclasses.dataclass(frozen=True)
class Observed:
    jobs: list[ObservedJob]
    expected: list[ExpectedJob]
    pods_by_job: dict[str, dict[str, Any]]


def observe_children(
    state: StudyState,
    *,
    key: tuple[str, str],
    uid: str,
    jobs_index: ChildIndex,
    pods_index: ChildIndex,
    wait: float = EXPECTATION_SECONDS,
) -> Observed:
    """The study's Jobs from the index (only those it owns), and the Jobs created but unseen."""
    pods = list(pods_index.get(key, []))
    candidates = _PodCandidates(pods)
    observed: list[ObservedJob] = []
    memo: dict[str, ObservedMemo] = {}
    for job in jobs_index.get(key, []):
        owners = (job.get("metadata") or {}).get("ownerReferences") or []
        if uid and not any(o.get("uid") == uid for o in owners):
            continue  # a Job of an earlier TuningStudy with the same name
        o = _observe(state.observed, memo, job, candidates.of(job))
        if o is not None:
            observed.append(o)
    state.observed = memo  # Jobs gone from the index are forgotten
    pods_by_job = {name: pods[found[-1]] for name, found in candidates.by_name.items()}
    expected = _expectations(state, {o.name for o in observed}, time.monotonic(), wait)
    return Observed(observed, expected, pods_by_job)


def _observe(
    last: Mapping[str, ObservedMemo],
    memo: dict[str, ObservedMemo],
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
) -> ObservedJob | None:
    """``observe_job``, or what it returned last pass for the same entries: with the finished
    Jobs kept, observing every Job anew took 60 % of a pass at 10,000 Jobs."""
    name = str((job.get("metadata") or {}).get("name", ""))
    hit = last.get(name)
    same = (
        hit is not None
        and hit[0] is job
        and len(hit[1]) == len(pods)
        and all(map(operator.is_, hit[1], pods))
    )
    o = hit[2] if same and hit is not None else observe_job(job, pods)
    memo[name] = (job, tuple(pods), o)
    return o


def _trial_label(obj: Mapping[str, Any]) -> int | None:
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_TRIAL)
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


class _PodCandidates:
    """The study's pods grouped by their ``job-name`` and trial labels, so that each Job is
    matched against its own few pods, not all of them: with the finished Jobs and Pods kept
    (``ttlSecondsAfterFinished``), matching every pod for every Job made a pass quadratic,
    0.6 s at 1,000 Jobs and a minute at 10,000 (benchmarks/README.md, large_study).
    ``observe_job`` still picks the pods that are the Job's own among these."""

    def __init__(self, pods: Sequence[Mapping[str, Any]]) -> None:
        self._pods = pods
        #: ``job-name`` label -> indexes of its pods, in the index's order.
        self.by_name: dict[str, list[int]] = {}
        self._by_trial: dict[int, list[int]] = {}
        for i, p in enumerate(pods):
            name = ((p.get("metadata") or {}).get("labels") or {}).get("job-name")
            if isinstance(name, str):
                self.by_name.setdefault(name, []).append(i)
            trial = _trial_label(p)
            if trial is not None:
                self._by_trial.setdefault(trial, []).append(i)

    def of(self, job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Every pod that may be the Job's, in the index's order (the last pod seen wins)."""
        name = str((job.get("metadata") or {}).get("name", ""))
        trial = _trial_label(job)
        found = set(self.by_name.get(name, ()))
        found.update(self._by_trial.get(trial, ()) if trial is not None else ())
        return [self._pods[i] for i in sorted(found)]


def _expectations(
    state: StudyState, indexed: set[str], now: float, wait: float
) -> list[ExpectedJob]:
    """Jobs we created that the index does not show yet; an entry ends when kopf delivers an
    event for the Job (the index then knows it, or knows it is gone) or after ``wait`` seconds
    (then the decision asks for a direct read before the Job may count as deleted)."""
    for name, when in list(state.seen.items()):
        if now - when > max(wait, EXPECTATION_SECONDS):
            state.seen.pop(name, None)
    expected: list[ExpectedJob] = []
    for name, (trial, attempt, created) in list(state.expected.items()):
        if name in indexed or name in state.seen or now - created > wait:
            state.expected.pop(name, None)
        else:
            expected.append(ExpectedJob(name, trial, attempt))
    return expected


async def with_log_tails(
    rt: Runtime,
    *,
    namespace: str,
    spec: TuningStudySpec,
    jobs: list[ObservedJob],
    snap: LedgerSnapshot,
    pods_by_job: Mapping[str, Mapping[str, Any]],
) -> list[ObservedJob]:
    """Fetch the log tail of Jobs whose failure is about to be told (user errors only)."""
    out = []
    container = spec.trial.trainer_container().get("name")
    for j in jobs:
        if j.phase != "Failed" or j.failure != "UserError":
            out.append(j)  # the common case, checked first: a pass sees every Job kept
            continue
        rec = snap.trial(j.trial)
        about_to_fail = rec is not None and rec.state == "RUNNING" and rec.attempt == j.attempt
        pod_name = ((pods_by_job.get(j.name) or {}).get("metadata") or {}).get("name")
        if about_to_fail and pod_name:
            tail = await asyncio.to_thread(rt.api.pod_log_tail, namespace, pod_name, container)
            out.append(dataclasses.replace(j, log_tail=tail))
        else:
            out.append(j)
    return out
