"""Reading the ledger: Optuna trials as the reconcile's records, and the incremental snapshot.

What :meth:`kubetune.ledger.Ledger.snapshot` reads every pass (see the package docstring for
why it is incremental). Optuna's private table models and session helper are used here and
nowhere else outside this package.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models as _models  # private: the incremental snapshot's query
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from kubetune.ledger._usage import stored_usage
from kubetune.status import LedgerSnapshot, TrialRecord, TrialUsage

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


ATTEMPT_ATTR = "kubetune:attempt"
JOB_CREATED_ATTR = "kubetune:job_created"
#: Asked ahead: no Job until a slot frees (``kubetune.reconcile._ahead``).
PARKED_ATTR = "kubetune:parked"
FAIL_REASON_ATTR = "kubetune:fail_reason"
FAIL_MESSAGE_ATTR = "kubetune:fail_message"
SPEC_HASH_ATTR = "kubetune:spec_hash"
ENQUEUED_ATTR = "kubetune:enqueued"
#: Last report or heartbeat of a trial (unix seconds, float), written by the report API.
HEARTBEAT_ATTR = "kubetune:heartbeat"
_STATES = {
    TrialState.RUNNING: "RUNNING",
    TrialState.WAITING: "WAITING",
    TrialState.COMPLETE: "COMPLETE",
    TrialState.PRUNED: "PRUNED",
    TrialState.FAIL: "FAIL",
}


def _when(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _int_attr(attrs: Mapping[str, Any], key: str, default: int) -> int:
    value = attrs.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def record(t: FrozenTrial) -> TrialRecord:
    attrs = t.user_attrs
    asked = ATTEMPT_ATTR in attrs or t.state != TrialState.RUNNING
    job_created = _int_attr(attrs, JOB_CREATED_ATTR, -1)
    return TrialRecord(
        number=t.number,
        state=_STATES.get(t.state, "FAIL"),  # type: ignore[arg-type]
        params=dict(t.params),
        values=tuple(float(v) for v in t.values) if t.values is not None else None,
        attempt=_int_attr(attrs, ATTEMPT_ATTR, 0),
        job_created=job_created,
        fail_reason=attrs.get(FAIL_REASON_ATTR),
        datetime_start=_when(t.datetime_start),
        datetime_complete=_when(t.datetime_complete),
        last_step=max(t.intermediate_values) if t.intermediate_values else None,
        asked=asked,
        heartbeat=_heartbeat(attrs),
        parked=attrs.get(PARKED_ATTR) is True and job_created < 0 and t.state == TrialState.RUNNING,
    )


def _heartbeat(attrs: Mapping[str, Any]) -> datetime | None:
    raw = attrs.get(HEARTBEAT_ATTR)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def snapshot(study: optuna.Study, finished: dict[int, TrialRecord] | None = None) -> LedgerSnapshot:
    """The whole study as plain data for the pure reconcile.

    ``finished`` caches the records of finished trials (number -> record) between calls:
    finished trials never change, so only RUNNING/WAITING and new trials are converted again.
    Optuna's cached storage already reads only those from the database.
    """
    attrs = study.user_attrs
    records = []
    for t in study.get_trials(deepcopy=False):
        rec = finished.get(t.number) if finished is not None else None
        if rec is None:
            rec = record(t)
            if finished is not None and t.state.is_finished():
                finished[t.number] = rec
        records.append(rec)
    trials = tuple(records)
    return LedgerSnapshot(
        study_name=study.study_name,
        trials=trials,
        spec_hash=attrs.get(SPEC_HASH_ATTR),
        usage=stored_usage(attrs),
    )


#: Seconds between full reads of a study by :meth:`Ledger.snapshot` (other writers' changes).
REFRESH_SECONDS = 60.0


@dataclasses.dataclass
class StudyCache:
    """One study's records between snapshots (see the module docstring)."""

    records: dict[int, TrialRecord] = dataclasses.field(default_factory=dict)
    #: trial id -> number, for trials not finished when last read.
    unfinished: dict[int, int] = dataclasses.field(default_factory=dict)
    max_id: int = -1
    #: Trial numbers this ledger wrote to since the last snapshot.
    dirty: set[int] = dataclasses.field(default_factory=set)
    #: (spec hash, usage); the usage dict is replaced, never changed: snapshots share it.
    attrs: tuple[Any, dict[int, TrialUsage]] | None = None
    refreshed: float = -math.inf
    trials: tuple[TrialRecord, ...] | None = None

    def store(self, t: FrozenTrial) -> None:
        old = self.records.get(t.number)
        if old is None or not _finished(old) or old.state != _STATES.get(t.state):
            self.records[t.number] = record(t)
            self.trials = None
        self.max_id = max(self.max_id, t._trial_id)
        if t.state.is_finished():
            self.unfinished.pop(t._trial_id, None)
        else:
            self.unfinished[t._trial_id] = t.number

    def snapshot(self, study_name: str) -> LedgerSnapshot:
        if self.trials is None:
            self.trials = tuple(self.records[n] for n in sorted(self.records))
        spec_hash_, usage = self.attrs or (None, {})
        return LedgerSnapshot(study_name, self.trials, spec_hash_, usage)


def _finished(rec: TrialRecord) -> bool:
    return rec.state not in ("RUNNING", "WAITING")


def rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        return backend
    return None


def _poll(backend: optuna.storages.RDBStorage, study_id: int, cache: StudyCache) -> list[Any]:
    """(trial id, number, state, last step, heartbeat JSON) of the trials unfinished or new
    since the last read: what other writers (the report API) change without a state change."""
    trial, value = _models.TrialModel, _models.TrialIntermediateValueModel
    attr = _models.TrialUserAttributeModel
    last_step = (
        sqlalchemy.select(sqlalchemy.func.max(value.step))
        .where(value.trial_id == trial.trial_id)
        .scalar_subquery()
    )
    heartbeat = (
        sqlalchemy.select(attr.value_json)
        .where(attr.trial_id == trial.trial_id, attr.key == HEARTBEAT_ATTR)
        .limit(1)
        .scalar_subquery()
    )
    columns = (trial.trial_id, trial.number, trial.state, last_step, heartbeat)
    query = sqlalchemy.select(*columns).where(
        trial.study_id == study_id,
        sqlalchemy.or_(trial.trial_id > cache.max_id, trial.trial_id.in_(list(cache.unfinished))),
    )
    with _create_scoped_session(backend.scoped_session) as session:
        return list(session.execute(query).all())


def read_changes(
    backend: optuna.storages.RDBStorage, study_id: int, cache: StudyCache, dirty: set[int]
) -> None:
    """Poll; read in full only new trials, changed states and ``dirty`` ones."""
    changed: set[int] = set()
    for tid, number, state, last_step, raw_heartbeat in _poll(backend, study_id, cache):
        rec = cache.records.get(number)
        if tid > cache.max_id or rec is None or number in dirty or rec.state != _STATES[state]:
            changed.add(tid)
            continue
        beat = _heartbeat({HEARTBEAT_ATTR: json.loads(raw_heartbeat)}) if raw_heartbeat else None
        if (rec.last_step, rec.heartbeat) != (last_step, beat):
            cache.records[number] = dataclasses.replace(rec, last_step=last_step, heartbeat=beat)
            cache.trials = None
    if changed:
        for t in backend._get_trials(study_id, None, changed, cache.max_id):
            cache.store(t)
