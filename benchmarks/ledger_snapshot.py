"""Ledger snapshot cost: the read every reconcile pass makes, per study, before it decides.

The 30 x 50 scale point spent 62.5 % of the operator's CPU in ``Ledger.snapshot`` (every pass
re-read each RUNNING trial with its params and attributes, and parsed the study's usage map).
This measures, on one study with N finished and M running trials in PostgreSQL, the
milliseconds of one snapshot by the full read (:func:`kubetune.ledger.snapshot`, what every
pass did before) and by the incremental one (:meth:`kubetune.ledger.Ledger.snapshot`), in the
same run: an idle pass (nothing changed, most passes: woken by Job and Pod events) and a busy
pass (one trial told, one asked and its Job marked created since the last pass).

    python -m benchmarks.ledger_snapshot            # N = 1,000 and 10,000, M = 50
    python -m benchmarks.ledger_snapshot --smoke    # N = 200
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages._rdb.storage import _create_scoped_session

from benchmarks._common import (
    conditions,
    parser,
    percentile,
    print_conditions,
    print_table,
    size_name,
    write_result,
)

NAME = "ledger_snapshot"
RUNNING = 50
PASSES = 40


def _spec() -> Any:
    from kubetune.spec import parse_manifest

    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "snap"},
        "spec": {
            "objectives": [{"name": "acc", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}},
                {"name": "layers", "int": {"low": 1, "high": 4}},
                {"name": "opt", "categorical": {"choices": ["sgd", "adam"]}},
            ],
            "sampler": {"type": "Random", "seed": 1},
            "trial": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
        },
    }
    return parse_manifest(manifest).spec


def _fill(ledger: Any, study: optuna.Study, spec: Any, finished: int) -> None:
    """``finished`` COMPLETE trials as the operator leaves them (attrs, usage), then RUNNING.

    The finished ones are inserted in one transaction through Optuna's own table models
    (``study.add_trials`` takes ~30 ms a trial on this machine: 5 minutes for 10,000).
    """
    from kubetune.reconcile import RecordUsage

    backend = study._storage._backend  # type: ignore[attr-defined]
    with _create_scoped_session(backend.scoped_session) as session:
        session.add_all(_finished_trial(study._study_id, i, finished) for i in range(finished))
    ledger.record_usage(study, [RecordUsage(i, 1, 1.0) for i in range(finished)])
    for _ in range(RUNNING):
        number, _params = ledger.ask(study, spec)
        ledger.mark_job_created(study, number, 0)


def _finished_trial(study_id: int, number: int, total: int) -> Any:
    """One COMPLETE trial row with its params, value, two steps and the operator's attrs."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.distributions import distribution_to_json as to_json
    from optuna.storages._rdb import models as m

    from kubetune.ledger import ATTEMPT_ATTR, JOB_CREATED_ATTR

    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    params = (
        ("lr", FloatDistribution(1e-4, 0.1, log=True), 1e-3),
        ("layers", IntDistribution(1, 4), 1 + number % 4),
        ("opt", CategoricalDistribution(["sgd", "adam"]), "sgd"),
    )
    finite = m.TrialValueModel.TrialValueType.FINITE
    step_finite = m.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    return m.TrialModel(
        number=number,
        study_id=study_id,
        state=optuna.trial.TrialState.COMPLETE,
        _datetime_start_utc=now,
        _datetime_complete_utc=now,
        params=[
            m.TrialParamModel(
                param_name=n, param_value=d.to_internal_repr(v), distribution_json=to_json(d)
            )
            for n, d, v in params
        ],
        values=[m.TrialValueModel(objective=0, value=number / total, value_type=finite)],
        intermediate_values=[
            m.TrialIntermediateValueModel(
                step=s, intermediate_value=0.1 * s, intermediate_value_type=step_finite
            )
            for s in (0, 1)
        ],
        user_attributes=[
            m.TrialUserAttributeModel(key=k, value_json=json.dumps(0))
            for k in (ATTEMPT_ATTR, JOB_CREATED_ATTR)
        ],
    )


def _busy(ledger: Any, study: optuna.Study, spec: Any, running: list[int]) -> None:
    """What one acting pass writes: one trial told, one asked, its Job marked created."""
    ledger.tell(study, running.pop(0), "COMPLETE", [0.5])
    number, _ = ledger.ask(study, spec)
    ledger.mark_job_created(study, number, 0)
    running.append(number)


def _timed(fn: Callable[[], Any], between: Callable[[], None] | None) -> list[float]:
    out = []
    for _ in range(PASSES):
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(url: str, finished: int) -> dict[str, Any]:
    """Both snapshots on one study of ``finished`` + RUNNING trials; ms per call."""
    from kubetune.ledger import Ledger, make_storage, snapshot

    spec = _spec()
    ledger = Ledger(make_storage(url))
    study = ledger.open(spec, namespace="bench", name=f"snap{finished}", uid="u")
    t0 = time.perf_counter()
    _fill(ledger, study, spec, finished)
    fill_s = time.perf_counter() - t0
    running = [t.number for t in study.get_trials(deepcopy=False) if not t.state.is_finished()]
    cache: dict[int, Any] = {}
    full = snapshot(study, cache)
    fresh = Ledger(ledger.storage).snapshot(study)
    assert fresh == full == ledger.snapshot(study), "the snapshots disagree"
    out: dict[str, Any] = {"finished": finished, "running": RUNNING, "fill_s": round(fill_s, 1)}
    for name, between in (("idle", None), ("busy", lambda: _busy(ledger, study, spec, running))):
        before = _timed(lambda: snapshot(study, cache), between)
        after = _timed(lambda: ledger.snapshot(study), between)
        assert ledger.snapshot(study) == snapshot(study, cache), "the snapshots disagree"
        for label, values in (("full", before), ("incremental", after)):
            out[f"{name}_{label}_p50_ms"] = round(percentile(values, 50), 2)
            out[f"{name}_{label}_p95_ms"] = round(percentile(values, 95), 2)
        out[f"{name}_ratio"] = round(
            out[f"{name}_full_p50_ms"] / max(out[f"{name}_incremental_p50_ms"], 1e-6), 1
        )
    ledger.storage.engine.dispose()  # type: ignore[attr-defined]
    return out


def main(argv: Sequence[str] | None = None, url: str | None = None) -> dict[str, Any]:
    """Run at the chosen size on ``url`` (a fresh PostgreSQL database; else one is started)."""
    from harness.postgres import start_server

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    sizes = [200] if args.smoke else [1000, 10000]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    server = start_server() if url is None else None
    try:
        if server is not None:
            url = server.url(server.create_database("snap"))
        assert url is not None
        info = conditions(url, running_trials=RUNNING, passes=PASSES)
        print_conditions(info)
        rows = [measure(url, n) for n in sizes]
    finally:
        if server is not None:
            server.cleanup()
    print_table(
        ["finished N", "idle full / incr ms (p50)", "ratio", "busy full / incr ms (p50)", "ratio"],
        [
            [
                r["finished"],
                f"{r['idle_full_p50_ms']} / {r['idle_incremental_p50_ms']}",
                r["idle_ratio"],
                f"{r['busy_full_p50_ms']} / {r['busy_incremental_p50_ms']}",
                r["busy_ratio"],
            ]
            for r in rows
        ],
    )
    result = {
        "benchmark": NAME,
        "conditions": info,
        "size": size_name(args),
        "points": rows,
        "summary": {f"{r['finished']} finished": r for r in rows},
    }
    write_result(args.out, NAME, result)
    return result


if __name__ == "__main__":
    main()
