"""The Optuna storage as the trial ledger: the operator's only durable state.

Every call here blocks (SQL); the kopf shell runs them with ``asyncio.to_thread``. One
:class:`Ledger` (one storage, one small connection pool) serves every study of the process:
the scale target is at most 10 database connections for 100 studies.

What the ledger records beyond Optuna's own fields:

- study user attrs: ``kubetune:spec_hash`` (the immutable part of the spec, to refuse
  changes), ``kubetune:enqueued`` (warm-start trials were enqueued, once),
  ``kubetune:namespace|name|uid`` (which TuningStudy owns it), ``kubetune:usage:<k>`` (GPU-seconds
  settled per trial, ``{"<number>": [attempts_settled, gpu_seconds]}``, in shards of 1,000
  trials; study attrs because finished trials cannot take new attrs; see ``_usage``);
- trial user attrs: ``kubetune:attempt`` (current attempt; the report API checks tokens against
  it), ``kubetune:job_created`` (highest attempt whose Job creation was confirmed; tells "the
  operator crashed before creating the Job" from "the Job was deleted"),
  ``kubetune:fail_reason`` and ``kubetune:fail_message``, ``kubetune:heartbeat`` (the
  trainer's last report or heartbeat, written by the report API; read here for the reconcile).

Every reconcile pass reads a snapshot, and most passes (woken by Job and Pod events) follow no
change at all; re-reading each RUNNING trial with its params and attributes took 62.5 % of the
operator's CPU at 30 studies x 50 trials (benchmarks/README.md). :meth:`Ledger.snapshot` is
therefore incremental: one light query (trial id, number, state, last step, heartbeat) over
the trials unfinished or new since the last pass, a full read only of trials whose state
changed, that are new, or that this ledger wrote to since; the study's attributes are re-read
only after this ledger wrote them. Every ``refresh_seconds`` it reads everything again, for
writers other than this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from kubetune.ledger._records import (
    ATTEMPT_ATTR,
    ENQUEUED_ATTR,
    FAIL_MESSAGE_ATTR,
    FAIL_REASON_ATTR,
    HEARTBEAT_ATTR,
    JOB_CREATED_ATTR,
    PARKED_ATTR,
    REFRESH_SECONDS,
    SPEC_HASH_ATTR,
    StudyCache,
    rdb,
    read_changes,
    record,
    snapshot,
)
from kubetune.ledger._storage import (
    find_trial,
    make_storage,
    normalise_storage_url,
    read_trial,
    write_intermediate,
    write_user_attr,
)
from kubetune.ledger._usage import (
    USAGE_ATTR,
    USAGE_SHARD_PREFIX,
    is_usage_attr,
    stored_usage,
    usage_shard,
    write_usage,
)
from kubetune.reconcile import RecordUsage, spec_hash
from kubetune.sampling import directions, make_pruner, make_sampler
from kubetune.search_space import suggest_params
from kubetune.status import LedgerSnapshot, TrialRecord

if TYPE_CHECKING:
    from kubetune.spec import TuningStudySpec

__all__ = [
    "ATTEMPT_ATTR",
    "ENQUEUED_ATTR",
    "FAIL_MESSAGE_ATTR",
    "FAIL_REASON_ATTR",
    "HEARTBEAT_ATTR",
    "JOB_CREATED_ATTR",
    "OPEN_ERRORS",
    "SPEC_HASH_ATTR",
    "STORAGE_ERRORS",
    "USAGE_ATTR",
    "USAGE_SHARD_PREFIX",
    "Ledger",
    "find_trial",
    "is_usage_attr",
    "make_storage",
    "normalise_storage_url",
    "optuna_study_name",
    "read_trial",
    "snapshot",
    "stored_usage",
    "usage_shard",
    "write_intermediate",
    "write_user_attr",
]

logger = logging.getLogger(__name__)

#: What a call to an unreachable database raises; the shells answer it with a retry (503,
#: backoff), never a crash, so the list lives once, next to the storage it speaks for.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.SQLAlchemyError,
    OSError,
)
#: What opening a storage URL can raise besides: a malformed URL (ValueError), a database
#: driver that is not installed (ImportError).
OPEN_ERRORS: tuple[type[BaseException], ...] = (*STORAGE_ERRORS, ImportError, ValueError)
_MAX_MESSAGE = 4000


def optuna_study_name(namespace: str, name: str, uid: str) -> str:
    """``<namespace>.<name>.<uid>``: a re-created TuningStudy (new uid) gets a fresh study."""
    return f"{namespace}.{name}.{uid}"


def _resumed(study: optuna.Study) -> bool:
    """Some trial of the study was asked for already (by this process or an earlier one)."""
    return any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


class Ledger:
    """Opens studies and performs the reconcile's ledger actions (thread-safe, blocking)."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage | str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._storage = make_storage(storage) if isinstance(storage, str) else storage
        self._refresh_seconds = refresh_seconds
        self._caches: dict[int, StudyCache] = {}
        self._lock = threading.Lock()
        self._studies: dict[str, optuna.Study] = {}
        self._names: dict[tuple[str, str], str] = {}
        #: (study id, trial number) -> trial id; never changes once the trial exists.
        self._ids: dict[tuple[int, int], int] = {}
        #: Studies with a trial released to WAITING since their last snapshot.
        self._released: set[int] = set()

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self._storage

    def open(
        self,
        spec: TuningStudySpec,
        *,
        namespace: str,
        name: str,
        uid: str,
        study_name: str | None = None,
    ) -> optuna.Study:
        """Create or load the study; the first opener records the spec hash and warm starts.

        The cached study keeps its sampler across reconciles (TPE, CMA-ES keep state). A
        spec whose immutable parts changed is not applied here: the hash stays the old one
        and the reconcile reports ``Invalid``. ``study_name`` defaults to
        :func:`optuna_study_name`; ``kubetune run`` names its study after the manifest, and
        such a study records no owning TuningStudy.
        """
        owned = study_name is None
        study_name = study_name or optuna_study_name(namespace, name, uid)
        with self._lock:
            cached = self._studies.get(study_name)
        if cached is not None:
            with self._lock:
                self._names[(namespace, name)] = study_name
            return cached
        study = optuna.create_study(
            storage=self._storage,
            study_name=study_name,
            directions=directions(spec),
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
            load_if_exists=True,
        )
        attrs = study.user_attrs
        if SPEC_HASH_ATTR not in attrs:
            study.set_user_attr(SPEC_HASH_ATTR, spec_hash(spec))
            if owned:
                study.set_user_attr("kubetune:namespace", namespace)
                study.set_user_attr("kubetune:name", name)
                study.set_user_attr("kubetune:uid", uid)
        if not attrs.get(ENQUEUED_ATTR):
            for fixed in spec.enqueue_trials:
                study.enqueue_trial(dict(fixed), skip_if_exists=True)
            study.set_user_attr(ENQUEUED_ATTR, True)
        elif _resumed(study):
            # A seeded sampler would otherwise replay the proposals of the first process that
            # ran this study (a restarted operator, a second ``kubetune run``).
            study.sampler.reseed_rng()
        with self._lock:
            self._studies[study_name] = study
            self._names[(namespace, name)] = study_name
        logger.info("Opened Optuna study study=%s", study_name)
        return study

    def exists(self, *, namespace: str, name: str, uid: str) -> bool:
        """Whether the Optuna study of this TuningStudy was ever created."""
        try:
            self._storage.get_study_id_from_name(optuna_study_name(namespace, name, uid))
        except KeyError:
            return False
        return True

    def forget(self, namespace: str, name: str) -> None:
        """Drop the cached study (the TuningStudy was deleted); the database keeps it."""
        with self._lock:
            study_name = self._names.pop((namespace, name), None)
            study = self._studies.pop(study_name, None) if study_name is not None else None
            if study is not None:
                sid = study._study_id
                self._caches.pop(sid, None)
                for key in [k for k in list(self._ids) if k[0] == sid]:
                    self._ids.pop(key, None)

    def resolve(self, namespace: str, name: str) -> optuna.Study | None:
        """The report API's resolver: the study this operator manages for ``namespace/name``."""
        with self._lock:
            study_name = self._names.get((namespace, name))
            return self._studies.get(study_name) if study_name else None

    def snapshot(self, study: optuna.Study) -> LedgerSnapshot:
        """The study for the pure reconcile, read incrementally (see the module docstring).

        One reconcile pass per study at a time: the per-study cache is not read by two
        threads at once; writes from other threads only mark trials dirty (under the lock).
        """
        sid = study._study_id
        with self._lock:
            cache = self._caches.setdefault(sid, StudyCache())
            dirty, cache.dirty = cache.dirty, set()
        backend = rdb(study)
        now = time.monotonic()
        if backend is None or now - cache.refreshed > self._refresh_seconds:
            for t in study.get_trials(deepcopy=False):
                cache.store(t)
            cache.attrs, cache.refreshed = None, now
        else:
            read_changes(backend, sid, cache, dirty)
        if cache.attrs is None:
            attrs = study.user_attrs
            cache.attrs = (attrs.get(SPEC_HASH_ATTR), stored_usage(attrs))
        with self._lock:
            self._released.discard(sid)
        return cache.snapshot(study.study_name)

    def _touch(self, study: optuna.Study, number: int | None = None) -> None:
        """This ledger wrote to trial ``number`` (None: to the study's attributes)."""
        with self._lock:
            cache = self._caches.get(study._study_id)
            if cache is None:
                return
            if number is None:
                cache.attrs = None
            else:
                cache.dirty.add(number)

    def _trial_id(self, study: optuna.Study, number: int) -> int:
        key = (study._study_id, number)
        tid = self._ids.get(key)
        if tid is None:
            tid = int(study._storage.get_trial_id_from_study_id_trial_number(key[0], number))
            self._ids[key] = tid
        return tid

    def trial(self, study: optuna.Study, number: int) -> TrialRecord:
        """One trial as the reconcile sees it (to announce what the report API just told)."""
        return record(study._storage.get_trial(self._trial_id(study, number)))

    def ask(
        self, study: optuna.Study, spec: TuningStudySpec, *, park: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Ask for a trial (enqueued and released ones first, with their parameters) and
        suggest its parameters; ``park``: asked ahead, no Job until a slot frees.

        ``kubetune:attempt`` is written last: a RUNNING trial without it was interrupted
        mid-ask. A trial asked ahead is marked parked first, so one cut short (a crash, the
        storage lost) is released for the next ask to finish, not failed; one whose sampler
        could not sample is unmarked, and failed like any (``AskInterrupted``), not retried.
        """
        trial = self._new_trial(study)
        tid = trial._trial_id
        self._ids[(study._study_id, trial.number)] = tid
        if park:
            study._storage.set_trial_user_attr(tid, PARKED_ATTR, True)
        try:
            params = suggest_params(trial, spec)
        except STORAGE_ERRORS:
            raise
        except Exception:
            if park:
                study._storage.set_trial_user_attr(tid, PARKED_ATTR, False)
            raise
        study._storage.set_trial_user_attr(tid, ATTEMPT_ATTR, 0)
        self._touch(study, trial.number)
        return trial.number, params

    def _new_trial(self, study: optuna.Study) -> optuna.Trial:
        """``study.ask()``, less its search for a WAITING trial when the last snapshot saw none
        and nothing was released since: that search re-reads every unfinished trial of the
        study (Optuna's cached storage), about half of an ask with 32 or more running."""
        sid = study._study_id
        with self._lock:
            cache = self._caches.get(sid)
            waiting = (
                cache is None
                or sid in self._released
                or any(
                    r.state == "WAITING"
                    for n in cache.unfinished.values()
                    if (r := cache.records.get(n)) is not None
                )
            )
        if waiting:
            return study.ask()
        study._thread_local.cached_all_trials = None  # as study.ask() does
        return optuna.Trial(study, study._storage.create_new_trial(sid))

    def release(self, study: optuna.Study, number: int) -> None:
        """Return a parked trial to WAITING (no longer parked): Optuna's next ask pops it and
        keeps its parameters. A crash between the two writes leaves an unparked RUNNING trial
        without a Job, which the reconcile launches (nothing is lost or run twice)."""
        tid = self._trial_id(study, number)
        study._storage.set_trial_user_attr(tid, PARKED_ATTR, False)
        study._storage.set_trial_state_values(tid, TrialState.WAITING)
        with self._lock:
            self._released.add(study._study_id)
        self._touch(study, number)

    def set_attempt(self, study: optuna.Study, number: int, attempt: int) -> None:
        study._storage.set_trial_user_attr(self._trial_id(study, number), ATTEMPT_ATTR, attempt)
        self._touch(study, number)

    def mark_job_created(self, study: optuna.Study, number: int, attempt: int) -> None:
        """Record that the Job of ``attempt`` exists (a no-op once the trial finished).

        No state pre-read: Optuna refuses to write to a finished trial, which is the only
        non-RUNNING state a trial with a Job can be in.
        """
        tid = self._trial_id(study, number)
        try:
            study._storage.set_trial_user_attr(tid, JOB_CREATED_ATTR, attempt)
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        self._touch(study, number)

    def tell(
        self,
        study: optuna.Study,
        number: int,
        state: str,
        values: Iterable[float] | None = None,
        *,
        reason: str | None = None,
        message: str = "",
    ) -> bool:
        """Finish a RUNNING trial; False when it was already finished (e.g. by the report API).

        No state pre-read (a transaction per tell): writing to a finished trial raises, and
        ``study.tell`` refuses a non-RUNNING one; only then is the state read to tell "already
        finished" from a real error.
        """
        tid = self._trial_id(study, number)
        self._touch(study, number)
        try:
            if state == "FAIL":
                if reason:
                    study._storage.set_trial_user_attr(tid, FAIL_REASON_ATTR, reason)
                if message:
                    study._storage.set_trial_user_attr(
                        tid, FAIL_MESSAGE_ATTR, message[-_MAX_MESSAGE:]
                    )
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, list(values or ()), state=TrialState.COMPLETE)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            if study._storage.get_trial(tid).state == TrialState.RUNNING:
                raise
            return False
        return True

    def record_usage(self, study: optuna.Study, records: Iterable[RecordUsage]) -> None:
        """Merge settled GPU-seconds into the study's usage shards (one transaction).

        The cached snapshot takes the shards as written instead of re-reading the study's
        attributes (which hold every shard).
        """
        records = list(records)
        if not records:
            return
        written = write_usage(rdb(study), study, records)
        with self._lock:
            cache = self._caches.get(study._study_id)
            if cache is not None and cache.attrs is not None:
                spec_hash_, usage = cache.attrs
                cache.attrs = (spec_hash_, {**usage, **written})

    def fail_running(self, study: optuna.Study, reason: str, message: str) -> int:
        """Fail every RUNNING trial (the TuningStudy is being deleted) but the parked ones,
        which never ran (they are released); returns how many failed."""
        self.release_parked(study)
        count = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self.tell(study, t.number, "FAIL", reason=reason, message=message):
                count += 1
        return count

    def release_parked(self, study: optuna.Study) -> int:
        """Release every parked trial (the run that parked them is ending); returns how many."""
        parked = [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if record(t).parked
        ]
        for number in parked:
            self.release(study, number)
        return len(parked)
