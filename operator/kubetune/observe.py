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
import functools
import operator
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from kubetune.jobs import LABEL_STUDY
from kubetune.observed_job import ObservedJob, observe_job, trial_label
from kubetune.reconcile import ExpectedJob
from kubetune.runtime import ObservedMemo, PodLabels, Runtime, StudyState
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
    pods: Sequence[Mapping[str, Any]]

    @functools.cached_property
    def pods_by_job(self) -> dict[str, Mapping[str, Any]]:
        """Each ``job-name`` label's last pod in the index; built when a failed Job's log is
        wanted, not every pass."""
        out: dict[str, Mapping[str, Any]] = {}
        for p in self.pods:
            name = _name_label(p)
            if name is not None:
                out[name] = p
        return out


def observe_children(
    state: StudyState,
    *,
    key: tuple[str, str],
    uid: str,
    jobs_index: ChildIndex,
    pods_index: ChildIndex,
    wait: float = EXPECTATION_SECONDS,
) -> Observed:
    """The study's Jobs from the index (only those it owns), and the Jobs created but unseen.

    A Job whose index entry is the one of last pass, and none of whose candidate pods (same
    ``job-name`` or trial label) was added, replaced or removed since, is what it was; the
    rest are observed anew. A walk of every Job and pod observed each took 60-80 % of a
    pass at 10,000 Jobs kept (benchmarks/README.md, 7.).
    """
    pods = list(pods_index.get(key, []))
    labels, dirty_names, dirty_trials = _pod_labels(state, pods)
    candidates: _PodCandidates | None = None
    observed: list[ObservedJob] = []
    memo: dict[str, ObservedMemo] = {}
    for job in jobs_index.get(key, []):
        name = str((job.get("metadata") or {}).get("name", ""))
        hit = state.observed.get(name)
        clean = hit is not None and name not in dirty_names and hit[3] not in dirty_trials
        if clean and hit is not None and hit[0] is job:
            memo[name] = hit  # owned: only owned Jobs are remembered
            if hit[2] is not None:
                observed.append(hit[2])
            continue
        owners = (job.get("metadata") or {}).get("ownerReferences") or []
        if uid and not any(o.get("uid") == uid for o in owners):
            continue  # a Job of an earlier TuningStudy with the same name
        candidates = candidates or _PodCandidates(labels)
        o = _observe(hit, memo, name, job, candidates.of(name, trial_label(job)))
        if o is not None:
            observed.append(o)
    state.observed = memo  # Jobs gone from the index are forgotten
    expected = _expectations(state, {o.name for o in observed}, time.monotonic(), wait)
    return Observed(observed, expected, pods)


def _observe(
    hit: ObservedMemo | None,
    memo: dict[str, ObservedMemo],
    name: str,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
) -> ObservedJob | None:
    """``observe_job``, or what it returned last pass for the same entries."""
    same = (
        hit is not None
        and hit[0] is job
        and len(hit[1]) == len(pods)
        and all(map(operator.is_, hit[1], pods))
    )
    o = hit[2] if same and hit is not None else observe_job(job, pods)
    memo[name] = (job, tuple(pods), o, trial_label(job))
    return o


def _pod_labels(
    state: StudyState, pods: Sequence[Mapping[str, Any]]
) -> tuple[list[PodLabels], set[str], set[int]]:
    """Each pod's ``job-name`` and trial labels (read once per index entry), and the labels
    of the entries added or removed since last pass (a replaced entry is both)."""
    last = state.pods_seen
    seen: dict[int, PodLabels] = {}
    names: set[str] = set()
    trials: set[int] = set()
    for p in pods:
        e = last.get(id(p))  # last pass's entries are alive: an id is not reused
        if e is None or e[0] is not p:
            e = (p, _name_label(p), trial_label(p))
            _mark(e, names, trials)
        seen[id(p)] = e
    for gone in last.keys() - seen.keys():
        _mark(last[gone], names, trials)
    state.pods_seen = seen
    return list(seen.values()), names, trials


def _mark(e: PodLabels, names: set[str], trials: set[int]) -> None:
    if e[1] is not None:
        names.add(e[1])
    if e[2] is not None:
        trials.add(e[2])


def _name_label(obj: Mapping[str, Any]) -> str | None:
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get("job-name")
    return raw if isinstance(raw, str) else None


class _PodCandidates:
    """The study's pods grouped by their ``job-name`` and trial labels, so that each Job is
    matched against its own few pods, not all of them: with the finished Jobs and Pods kept
    (``ttlSecondsAfterFinished``), matching every pod for every Job made a pass quadratic,
    0.6 s at 1,000 Jobs and a minute at 10,000 (benchmarks/README.md, large_study).
    ``observe_job`` still picks the pods that are the Job's own among these."""

    def __init__(self, labels: Sequence[PodLabels]) -> None:
        self._pods = [e[0] for e in labels]
        self._by_name: dict[str, list[int]] = {}
        self._by_trial: dict[int, list[int]] = {}
        for i, (_, name, trial) in enumerate(labels):
            if name is not None:
                self._by_name.setdefault(name, []).append(i)
            if trial is not None:
                self._by_trial.setdefault(trial, []).append(i)

    def of(self, name: str, trial: int | None) -> list[Mapping[str, Any]]:
        """Every pod that may be the Job's, in the index's order (the last pod seen wins)."""
        found = set(self._by_name.get(name, ()))
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
