"""Large studies: what one trial costs the operator at N finished trials, and the status size.

TPE slows as a study grows (every ask reads all trials); the operator must not add a second
slope of its own. Two measures, both in-process against the harness's PostgreSQL:

1. Per-trial cost at N finished trials (inserted fast through Optuna's own table models), over
   a window of trials, raw and operator interleaved trial by trial:

   - raw Optuna: ``study.ask()`` + suggest the params + ``study.tell()``, with the spec-built
     sampler (``kubetune.sampling.make_sampler``);
   - the operator's path for one trial: an acting pass (``observe_children`` over the study's
     Jobs and Pods as kopf's indexes hold them, ``Ledger.snapshot``, ``with_log_tails``,
     ``reconcile.decide``, the status compared and serialised), then what its decision says,
     applied in ``kubetune.apply``'s order (``Ledger.record_usage``, ``Ledger.tell``,
     ``Ledger.ask``, ``jobs.render_job``, ``Ledger.mark_job_created``), then idle passes. How
     many passes one trial causes is an assumption (``--passes``, default 3: the acting pass,
     the pass the loop runs at once after acting, one woken by the trial's watch events; on a
     quiet cluster each event that changes what the decision reads can wake one, see
     ``kubetune.wakeups`` and the README).
     The finished Jobs and their Pods stay in the indexes (``ttlSecondsAfterFinished`` longer
     than the study, the worst case; ``--jobs-kept none`` drops them).

2. The TuningStudy status ``decide`` writes for a synthetic ledger of 100,000 trials (and
   10,000), one and two objectives: its JSON size against the 64 KiB target (etcd refuses
   objects over 1.5 MiB), and the wall time of one ``decide`` (a pass's CPU cost).

    python -m benchmarks.large_study            # N = 1,000 and 10,000; status at 10k, 100k
    python -m benchmarks.large_study --smoke    # N = 50, Random only; status at 1,000
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from optuna.storages._rdb.storage import _create_scoped_session

from benchmarks._common import (
    conditions,
    parser,
    percentile,
    print_conditions,
    print_table,
    size_name,
    verdict,
    write_result,
)

NAME = "large_study"
NAMESPACE = "bench"
UID = "large-study-uid"
PARALLELISM = 8
WARMUP_TRIALS = 3
#: Passes per trial by default (see the module docstring).
PASSES_PER_TRIAL = 3
STATUS_TARGET_BYTES = 64 * 1024
ETCD_LIMIT_BYTES = 1536 * 1024
#: "No second slope": the operator/raw ratio at the largest N is at most this many times the
#: ratio at the smallest (an allowance for the noise of a shared machine, not a slope).
SLOPE_TOLERANCE = 1.25
#: CPython's collector thresholds: raw Optuna runs under them, as in a user's process.
CPYTHON_GC_THRESHOLDS = (700, 10, 10)
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"finished": [50], "window": 4, "samplers": ["Random"], "status": [1000]},
    "short": {
        "finished": [1000, 10000],
        "window": 30,
        "samplers": ["TPE", "Random"],
        "status": [10000, 100000],
    },
    "full": {
        "finished": [1000, 3000, 10000, 30000],
        "window": 50,
        "samplers": ["TPE", "Random"],
        "status": [10000, 100000],
    },
}


def _spec(sampler: str, objectives: int = 1) -> Any:
    """The zero-work benchmarks' study (x, y in [0, 1], minimise a paraboloid)."""
    from kubetune.spec import parse_manifest

    names = ["loss", "cost"][:objectives]
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "large", "namespace": NAMESPACE},
        "spec": {
            "objectives": [{"name": n, "direction": "minimize"} for n in names],
            "searchSpace": [
                {"name": "x", "float": {"low": 0.0, "high": 1.0}},
                {"name": "y", "float": {"low": 0.0, "high": 1.0}},
            ],
            "sampler": {"type": sampler, "seed": 0},
            # A trial costs one ask, one Job and one mark whether it is asked ahead or when
            # its slot frees; asking when the slot frees keeps one launch per pass here.
            "budget": {"maxTrials": 100_000, "parallelism": PARALLELISM, "askAhead": 0},
            "trial": {
                "result": {"from": "TerminationMessage"},
                "template": {"spec": {"containers": [{"name": "trial", "image": "zero-work:1"}]}},
            },
        },
    }
    return parse_manifest(manifest).spec


def _loss(params: dict[str, Any]) -> float:
    return float((params["x"] - 0.3) ** 2 + (params["y"] - 0.7) ** 2)


def _fill(study: optuna.Study, finished: int, *, operator: bool, seed: int) -> None:
    """``finished`` COMPLETE trials in chunked transactions through Optuna's table models
    (``study.add_trials`` takes ~30 ms a trial here); with the operator's attributes when
    ``operator`` (attempt 0, Job created)."""
    from optuna.distributions import FloatDistribution
    from optuna.distributions import distribution_to_json as to_json
    from optuna.storages._rdb import models as m

    from kubetune.ledger import ATTEMPT_ATTR, JOB_CREATED_ATTR

    rng = random.Random(seed)
    dist = to_json(FloatDistribution(0.0, 1.0))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    finite = m.TrialValueModel.TrialValueType.FINITE
    attrs = (ATTEMPT_ATTR, JOB_CREATED_ATTR) if operator else ()
    backend = study._storage._backend  # type: ignore[attr-defined]
    for start in range(0, finished, 2000):
        rows = []
        for number in range(start, min(finished, start + 2000)):
            params = {"x": rng.random(), "y": rng.random()}
            rows.append(
                m.TrialModel(
                    number=number,
                    study_id=study._study_id,
                    state=optuna.trial.TrialState.COMPLETE,
                    _datetime_start_utc=now,
                    _datetime_complete_utc=now,
                    params=[
                        m.TrialParamModel(param_name=k, param_value=v, distribution_json=dist)
                        for k, v in params.items()
                    ],
                    values=[m.TrialValueModel(objective=0, value=_loss(params), value_type=finite)],
                    user_attributes=[
                        m.TrialUserAttributeModel(key=k, value_json=json.dumps(0)) for k in attrs
                    ],
                )
            )
        with _create_scoped_session(backend.scoped_session) as session:
            session.add_all(rows)


@dataclass
class _World:
    """kopf's indexes of one study's Jobs and Pods (slim bodies, as ``kubetune.handlers``
    keeps them), and the trials running in it, oldest first."""

    name: str
    keep: bool
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    by_name: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    running: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        from kubetune.jobs import study_label

        return NAMESPACE, study_label(self.name)

    def indexes(self) -> tuple[Any, Any]:
        return {self.key: self.jobs}, {self.key: self.pods}

    def add(self, number: int, params: dict[str, Any], manifest: dict[str, Any]) -> None:
        """The Job was created, and its pod runs (the instant kubelet)."""
        from kubetune.observed_job import slim_job

        stamp = _stamp()
        job = slim_job(manifest)
        job["status"] = {"startTime": stamp, "active": 1, "ready": 1}
        name = str(manifest["metadata"]["name"])
        labels = dict(manifest["spec"]["template"]["metadata"]["labels"])
        labels.update({"job-name": name, "batch.kubernetes.io/job-name": name})
        running = {"running": {"startedAt": stamp}}
        pod = {
            "metadata": {"name": f"{name}-p", "namespace": NAMESPACE, "labels": labels},
            "status": {"phase": "Running", "containerStatuses": [_trainer(running)]},
        }
        self.jobs.append(job)
        self.pods.append(pod)
        self.by_name[name] = (job, pod)
        self.running.append((number, params))

    def complete(self) -> int:
        """The oldest running trial's pod ends with its result; its Job turns Complete. The
        index entries are replaced, not changed, as kopf replaces them on each event."""
        from kubetune.jobs import job_name

        number, params = self.running.pop(0)
        name = job_name(self.name, number, 0)
        job, pod = self.by_name[name]
        stamp = _stamp()
        conds = [{"type": t, "status": "True", "lastTransitionTime": stamp} for t in _DONE]
        status = {**job["status"], "active": 0, "ready": 0, "succeeded": 1}
        status.update(completionTime=stamp, conditions=conds)
        message = json.dumps({"values": [_loss(params)]})
        ended = {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}
        done = {**job, "status": status}
        ended_pod = {
            **pod,
            "status": {"phase": "Succeeded", "containerStatuses": [_trainer(ended)]},
        }
        _replace(self.jobs, job, done)
        _replace(self.pods, pod, ended_pod)
        self.by_name[name] = (done, ended_pod)
        return number

    def expire(self, number: int) -> None:
        """``ttlSecondsAfterFinished`` ran out: the Job and its pod leave the indexes."""
        from kubetune.jobs import job_name

        job, pod = self.by_name.pop(job_name(self.name, number, 0))
        self.jobs.remove(job)
        self.pods.remove(pod)


_DONE = ("SuccessCriteriaMet", "Complete")


def _replace(items: list[dict[str, Any]], old: dict[str, Any], new: dict[str, Any]) -> None:
    """Put ``new`` where ``old`` is (searched from the end: the running trials are recent)."""
    for i in range(len(items) - 1, -1, -1):
        if items[i] is old:
            items[i] = new
            return
    raise ValueError("not in the index")


def _trainer(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "trial", "state": state}


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Operator:
    """The operator's per-study path, in-process and synchronous (no kopf, no API server:
    a Job create lands in ``world`` at once); ``spent`` sums the seconds per step."""

    ledger: Any
    study: optuna.Study
    spec: Any
    world: _World
    state: Any
    loop: asyncio.AbstractEventLoop
    status: dict[str, Any] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    passes: int = 0

    def timed(self, step: str, started: float) -> float:
        now = time.perf_counter()
        self.spent[step] = self.spent.get(step, 0.0) + now - started
        return now


def _pass(op: _Operator) -> Any:
    """One reconcile pass as ``kubetune.study_loop.reconcile_study`` makes it, minus the API:
    observe the indexes, read the ledger, decide, compare and serialise the status."""
    from kubetune.observe import observe_children, with_log_tails
    from kubetune.reconcile import decide
    from kubetune.sampling import grid_trials
    from kubetune.status import last_progress

    t = time.perf_counter()
    jobs_index, pods_index = op.world.indexes()
    seen = observe_children(
        op.state, key=op.world.key, uid=UID, jobs_index=jobs_index, pods_index=pods_index
    )
    t = op.timed("observe", t)
    study = op.ledger.open(op.spec, namespace=NAMESPACE, name=op.world.name, uid=UID)
    snap = op.ledger.snapshot(study)
    t = op.timed("snapshot", t)
    jobs = op.loop.run_until_complete(
        with_log_tails(
            cast(Any, None),  # only used to fetch a failed trainer's log: none fails here
            namespace=NAMESPACE,
            spec=op.spec,
            jobs=seen.jobs,
            snap=snap,
            pods_by_job=seen.pods_by_job,
        )
    )
    decision = decide(
        op.spec,
        1,
        jobs,
        snap,
        dt.datetime.now(dt.UTC),
        previous_status=op.status,
        expected=seen.expected,
        gone=set(),
        grid_trials=grid_trials(op.spec),
    )
    if any(op.status.get(k) != v for k, v in decision.status.items()):
        json.dumps(decision.status)  # what the status patch sends
    op.status = dict(decision.status)
    last_progress(snap)  # the stall metric's input
    op.timed("decide", t)
    op.passes += 1
    return decision


def _apply(op: _Operator, decision: Any) -> None:
    """``kubetune.apply.apply_decision``'s order (the decision's): usage, steps (the tells),
    then each launch's ask, Job and mark. Any other step means the benchmark's world is
    wrong: it stops."""
    from kubetune.jobs import render_job
    from kubetune.reconcile import Tell

    unexpected = [a for a in decision.steps if not isinstance(a, Tell)]
    if unexpected:
        raise RuntimeError(f"unexpected actions in the benchmark: {unexpected}")
    t = time.perf_counter()
    if decision.usage:
        op.ledger.record_usage(op.study, decision.usage)
    for a in decision.steps:
        op.ledger.tell(op.study, a.trial, a.state, a.values, reason=a.reason)
    t = op.timed("settle_and_tell", t)
    for _ in range(decision.launches):
        number, params = op.ledger.ask(op.study, op.spec)
        t = op.timed("ask", t)
        manifest = render_job(
            {"name": op.world.name, "namespace": NAMESPACE, "uid": UID},
            op.spec,
            number,
            0,
            params,
            report_url=None,
            token=None,
            optuna_study_name=op.study.study_name,
        )
        t = op.timed("render_job", t)
        op.world.add(number, params, manifest)  # the API server's part: not counted
        t = time.perf_counter()
        op.ledger.mark_job_created(op.study, number, 0)
        t = op.timed("mark_job_created", t)


def _operator_trial(op: _Operator, passes: int) -> tuple[float, float]:
    """One trial's Job completes; the passes it causes run. Returns (wall s, CPU s)."""
    from kubetune.reconcile import Tell

    number = op.world.complete()
    wall, cpu = time.perf_counter(), time.thread_time()
    decision = _pass(op)
    told = [a.trial for a in decision.actions if isinstance(a, Tell)]
    if told != [number] or decision.launches != 1:
        raise RuntimeError(f"trial {number}: told {told}, launched {decision.launches}")
    _apply(op, decision)
    for _ in range(passes - 1):
        idle = _pass(op)
        if idle.actions:
            raise RuntimeError(f"an idle pass acted: {idle.actions}")
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    if not op.world.keep:
        op.world.expire(number)
    return wall, cpu


def _raw_trial(study: optuna.Study, spec: Any) -> tuple[float, float]:
    """Raw Optuna: ask, suggest the spec's parameters, tell. Returns (wall s, CPU s)."""
    from kubetune.search_space import suggest_params

    wall, cpu = time.perf_counter(), time.thread_time()
    trial = study.ask()
    study.tell(trial, _loss(suggest_params(trial, spec)))
    return time.perf_counter() - wall, time.thread_time() - cpu


def _setup(url: str, sampler: str, finished: int, keep: bool) -> tuple[_Operator, optuna.Study]:
    """Two studies of ``finished`` identical trials: the operator's (with its attributes, its
    usage map, and, when ``keep``, the finished Jobs and Pods in the indexes) and a raw one."""
    from kubetune.jobs import render_job
    from kubetune.ledger import Ledger, make_storage
    from kubetune.reconcile import RecordUsage
    from kubetune.runtime import StudyState
    from kubetune.sampling import directions, make_sampler

    spec = _spec(sampler)
    name = f"large-{sampler.lower()}-{finished}"
    ledger = Ledger(make_storage(url))
    study = ledger.open(spec, namespace=NAMESPACE, name=name, uid=UID)
    _fill(study, finished, operator=True, seed=finished)
    ledger.record_usage(study, [RecordUsage(i, 1, 0.0) for i in range(finished)])
    raw = optuna.create_study(
        storage=optuna.storages.RDBStorage(url),
        study_name=f"raw-{name}",
        sampler=make_sampler(spec),
        directions=directions(spec),
    )
    _fill(raw, finished, operator=False, seed=finished)
    world = _World(name, keep)
    if keep:
        meta = {"name": name, "namespace": NAMESPACE, "uid": UID}
        for t in study.get_trials(deepcopy=False):
            params = dict(t.params)
            manifest = render_job(
                meta, spec, t.number, 0, params, report_url=None, token=None, optuna_study_name=""
            )
            world.add(t.number, params, manifest)
            world.complete()
    op = _Operator(ledger, study, spec, world, StudyState(), asyncio.new_event_loop())
    return op, raw


def measure(
    url: str, sampler: str, finished: int, *, window: int, passes: int, keep: bool
) -> dict[str, Any]:
    """ms per trial, raw and operator, interleaved trial by trial over ``window`` trials."""
    t0 = time.perf_counter()
    op, raw = _setup(url, sampler, finished, keep)
    fill_s = time.perf_counter() - t0
    _apply(op, _pass(op))  # the first pass fills the PARALLELISM slots
    for _ in range(WARMUP_TRIALS):  # first reads of all N trials (caches), imports
        _raw_trial(raw, op.spec)
        _operator_trial(op, passes)
    op.spent.clear()
    op.passes = 0
    raw_runs, op_runs = [], []
    for _ in range(window):
        with _collector(CPYTHON_GC_THRESHOLDS):
            raw_runs.append(_raw_trial(raw, op.spec))
        op_runs.append(_operator_trial(op, passes))
    op.loop.close()
    op.ledger.storage.engine.dispose()
    raw._storage._backend.engine.dispose()  # type: ignore[attr-defined]
    return _point(sampler, finished, raw_runs, op_runs, op, fill_s=fill_s, passes=passes)


@contextlib.contextmanager
def _collector(thresholds: tuple[int, int, int]) -> Iterator[None]:
    """Run under these collector thresholds (the process's are the operator's)."""
    old = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*old)


@contextlib.contextmanager
def _like_the_operator(collector: str) -> Iterator[dict[str, Any]]:
    """The operator's start-up collector settings (``kubetune.runtime.tune_collector``, once
    its modules are imported), unless ``collector`` is ``default``; undone after (the smoke
    test runs in the test process)."""
    import kubetune.handlers  # noqa: F401 - what the operator process has imported
    from kubetune.runtime import tune_collector

    old = gc.get_threshold()
    if collector == "tuned":
        tune_collector()
    try:
        yield {"collector": collector, "gc_thresholds": list(gc.get_threshold())}
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


def _point(
    sampler: str,
    finished: int,
    raw: Sequence[tuple[float, float]],
    operator: Sequence[tuple[float, float]],
    op: _Operator,
    *,
    fill_s: float,
    passes: int,
) -> dict[str, Any]:
    """The figures of one (sampler, N): p50 and mean ms per trial, CPU ms, the ratio (p50),
    and where the operator's time went (ms per trial and per pass)."""
    n = len(operator)
    out: dict[str, Any] = {"sampler": sampler, "finished": finished, "window": n}
    for label, runs in (("raw", raw), ("operator", operator)):
        walls = [1000 * w for w, _ in runs]
        out[f"{label}_p50_ms"] = round(percentile(walls, 50), 2)
        out[f"{label}_mean_ms"] = round(sum(walls) / n, 2)
        out[f"{label}_cpu_ms"] = round(1000 * sum(c for _, c in runs) / n, 2)
    out["ratio"] = round(out["operator_p50_ms"] / max(out["raw_p50_ms"], 1e-6), 2)
    out["cpu_ratio"] = round(out["operator_cpu_ms"] / max(out["raw_cpu_ms"], 1e-6), 2)
    out["extra_p50_ms"] = round(out["operator_p50_ms"] - out["raw_p50_ms"], 2)
    out["passes_per_trial"] = passes
    out["steps_ms_per_trial"] = {k: round(1000 * v / n, 2) for k, v in op.spent.items()}
    per_pass = sum(op.spent.get(k, 0.0) for k in ("observe", "snapshot", "decide"))
    out["pass_ms"] = round(1000 * per_pass / max(op.passes, 1), 2)
    out["jobs_in_index"] = len(op.world.jobs)
    out["fill_s"] = round(fill_s, 1)
    return out


def _synthetic_ledger(trials: int, objectives: int) -> Any:
    """A ledger of ``trials`` trials as the operator leaves them: PARALLELISM running, the rest
    complete (90 %), pruned (7 %) or failed (3 %, some retried), every one settled. Two
    objectives trade off against each other (a wide Pareto front, the costly case)."""
    from kubetune.status import LedgerSnapshot, TrialRecord, TrialUsage

    rng = random.Random(trials)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    records = []
    for n in range(trials):
        params = {"x": rng.random(), "y": rng.random()}
        roll = rng.random()
        values: tuple[float, ...] | None = None
        state = "RUNNING" if n >= trials - PARALLELISM else "COMPLETE"
        if state == "COMPLETE" and roll > 0.9:
            state = "PRUNED" if roll < 0.97 else "FAIL"
        if state == "COMPLETE":
            loss = _loss(params)
            values = (loss,) if objectives == 1 else (loss, 1.0 - loss + 0.05 * rng.random())
        records.append(
            TrialRecord(
                number=n,
                state=state,  # type: ignore[arg-type]
                params=params,
                values=values,
                attempt=1 if state == "FAIL" and roll > 0.99 else 0,
                job_created=0,
                fail_reason="ExitCode" if state == "FAIL" else None,
                datetime_start=start + dt.timedelta(seconds=n),
                datetime_complete=None if state == "RUNNING" else start + dt.timedelta(seconds=n),
            )
        )
    usage = {t.number: TrialUsage(t.attempt + 1, 0.0) for t in records if t.state != "RUNNING"}
    return LedgerSnapshot("bench.large.uid", tuple(records), usage=usage)


def status_point(trials: int, objectives: int, repeats: int) -> dict[str, Any]:
    """The status ``decide`` writes for a ledger of ``trials`` (JSON bytes) and the wall time
    of one ``decide`` (p50 of ``repeats``), with the running trials' Jobs observed."""
    from kubetune.jobs import job_name
    from kubetune.observed_job import ObservedJob
    from kubetune.reconcile import decide, spec_hash

    spec = _spec("TPE", objectives)
    snap = _synthetic_ledger(trials, objectives)
    snap = type(snap)(snap.study_name, snap.trials, spec_hash(spec), snap.usage)
    now = dt.datetime.now(dt.UTC)
    jobs = [
        ObservedJob(job_name("large", t.number, 0), t.number, 0, "Active", start_time=now)
        for t in snap.trials
        if t.state == "RUNNING"
    ]
    status: dict[str, Any] = {}
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        decision = decide(spec, 1, jobs, snap, now, previous_status=status)
        times.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.thread_time() - c0))
        status = decision.status
        if decision.actions:
            raise RuntimeError(f"the synthetic ledger needs actions: {decision.actions}")
    size = len(json.dumps(status, separators=(",", ":")).encode())
    return {
        "trials": trials,
        "objectives": objectives,
        "status_bytes": size,
        "largest_field": max(status, key=lambda k: len(json.dumps(status[k]))),
        "pareto_listed": len(status.get("paretoFront") or []),
        "best_value": status.get("bestValue"),
        "decide_p50_ms": round(percentile(times, 50), 2),
        "decide_cpu_p50_ms": round(percentile(cpu, 50), 2),
        "decide_runs": repeats,
        "target_met": size <= STATUS_TARGET_BYTES,
    }


def summarise(points: Sequence[dict[str, Any]], status: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per sampler: the points and the slope (ratio at the largest N over the smallest, of
    the p50 wall times; ``cpu_slope`` of the CPU times, which load disturbs less); per
    objective count: the status at each size, met when every size is within the target."""
    out: dict[str, Any] = {}
    for sampler in dict.fromkeys(p["sampler"] for p in points):
        rows = sorted((p for p in points if p["sampler"] == sampler), key=lambda p: p["finished"])
        slope = rows[-1]["ratio"] / rows[0]["ratio"] if len(rows) > 1 else None
        cpu = rows[-1]["cpu_ratio"] / rows[0]["cpu_ratio"] if len(rows) > 1 else None
        out[sampler] = {
            "points": {str(p["finished"]): _brief(p) for p in rows},
            "slope": round(slope, 2) if slope is not None else None,
            "cpu_slope": round(cpu, 2) if cpu is not None else None,
            "target_met": slope <= SLOPE_TOLERANCE if slope is not None else None,
        }
    for k in sorted({s["objectives"] for s in status}):
        rows = [s for s in status if s["objectives"] == k]
        out[f"status {k} objective{'s' if k > 1 else ''}"] = {
            "points": {str(s["trials"]): s for s in rows},
            "target_met": all(s["target_met"] for s in rows),
        }
    return out


def _brief(p: dict[str, Any]) -> dict[str, Any]:
    keys = (
        *("raw_p50_ms", "operator_p50_ms", "ratio"),
        *("raw_cpu_ms", "operator_cpu_ms", "cpu_ratio", "pass_ms"),
    )
    return {k: p[k] for k in keys}


def _print(points: Sequence[dict[str, Any]], status: Sequence[dict[str, Any]]) -> None:
    print_table(
        ["sampler", "N", "raw ms", "operator ms", "ratio", "CPU ms raw/op", "pass ms", "steps"],
        [
            [
                p["sampler"],
                p["finished"],
                p["raw_p50_ms"],
                p["operator_p50_ms"],
                p["ratio"],
                f"{p['raw_cpu_ms']} / {p['operator_cpu_ms']}",
                p["pass_ms"],
                " ".join(f"{k}={v}" for k, v in p["steps_ms_per_trial"].items()),
            ]
            for p in points
        ],
    )
    print_table(
        ["trials", "objectives", "status bytes", "largest field", "decide ms, CPU ms", "target"],
        [
            [
                s["trials"],
                s["objectives"],
                s["status_bytes"],
                s["largest_field"],
                f"{s['decide_p50_ms']}, {s['decide_cpu_p50_ms']}",
                verdict(s["target_met"]),
            ]
            for s in status
        ],
    )


def main(argv: Sequence[str] | None = None, url: str | None = None) -> dict[str, Any]:
    """Run at the chosen size on ``url`` (a fresh PostgreSQL database; else one is started)."""
    from harness.postgres import start_server

    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--passes", type=int, default=PASSES_PER_TRIAL, help="reconcile passes per trial"
    )
    p.add_argument("--jobs-kept", choices=("all", "none"), default="all", help="finished Jobs")
    p.add_argument(
        "--collector",
        choices=("tuned", "default"),
        default="tuned",
        help="the operator side's garbage collector: as the operator sets it, or CPython's",
    )
    args = p.parse_args(argv)
    cfg = SIZES[size_name(args)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _like_the_operator(args.collector) as collector:
        server = start_server() if url is None else None
        try:
            if server is not None:
                url = server.url(server.create_database("large"))
            assert url is not None
            info = conditions(
                url,
                parallelism=PARALLELISM,
                window=cfg["window"],
                passes_per_trial=args.passes,
                jobs_kept=args.jobs_kept,
                driven_by="in-process (no kopf, no API server)",
                **collector,
            )
            print_conditions(info)
            points = [
                measure(
                    url,
                    s,
                    n,
                    window=cfg["window"],
                    passes=args.passes,
                    keep=args.jobs_kept == "all",
                )
                for n in cfg["finished"]
                for s in cfg["samplers"]
            ]
        finally:
            if server is not None:
                server.cleanup()
        status = [
            status_point(n, k, repeats=3 if n >= 100000 else 5)
            for k in (1, 2)
            for n in cfg["status"]
        ]
    info["load_average_1m_5m_end"] = [round(x, 2) for x in os.getloadavg()]
    _print(points, status)
    result = {
        "benchmark": NAME,
        "conditions": info,
        "size": size_name(args),
        "points": points,
        "status": status,
        "summary": summarise(points, status),
        "target": {
            "status_bytes_max": STATUS_TARGET_BYTES,
            "status_at_trials": max(cfg["status"]),
            "etcd_object_limit_bytes": ETCD_LIMIT_BYTES,
            "slope_max": SLOPE_TOLERANCE,
        },
    }
    write_result(args.out, NAME, result)
    return result


if __name__ == "__main__":
    main()
