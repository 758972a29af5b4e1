"""The Optuna ledger adapter against a real PostgreSQL (``fresh_database``) and real Optuna."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from kubetune import reasons as R  # noqa: N812
from kubetune.ledger import (
    ATTEMPT_ATTR,
    FAIL_MESSAGE_ATTR,
    FAIL_REASON_ATTR,
    HEARTBEAT_ATTR,
    SPEC_HASH_ATTR,
    USAGE_ATTR,
    Ledger,
    make_storage,
    normalise_storage_url,
    optuna_study_name,
    snapshot,
    usage_shard,
)
from kubetune.reconcile import RecordUsage, spec_hash
from kubetune.spec import TuningStudySpec, parse_manifest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_spec(*, enqueue: list[dict[str, Any]] | None = None, high: float = 0.1) -> TuningStudySpec:
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "demo"},
        "spec": {
            "objectives": [{"name": "acc", "direction": "maximize"}],
            "searchSpace": [
                {"name": "lr", "float": {"low": 1e-4, "high": high, "log": True}},
                {"name": "opt", "categorical": {"choices": ["sgd", "adamw"]}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.9},
                    "when": {"param": "opt", "in": ["sgd"]},
                },
            ],
            "sampler": {"type": "TPE", "seed": 3},
            "enqueueTrials": enqueue or [],
            "trial": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
        },
    }
    return parse_manifest(manifest).spec


@pytest.fixture
def ledger(fresh_database: str) -> Iterator[Ledger]:
    yield Ledger(make_storage(fresh_database, pool_size=2, max_overflow=1))


def test_study_name_is_unique_per_uid() -> None:
    assert optuna_study_name("ml", "demo", "u1") == "ml.demo.u1"
    assert optuna_study_name("ml", "demo", "u1") != optuna_study_name("ml", "demo", "u2")


def test_open_records_hash_and_enqueues_warm_starts_once(ledger: Ledger) -> None:
    spec = make_spec(enqueue=[{"lr": 0.01, "opt": "sgd", "momentum": 0.9}])
    study = ledger.open(spec, namespace="ml", name="demo", uid="u1")
    assert study.study_name == "ml.demo.u1"
    assert study.user_attrs[SPEC_HASH_ATTR] == spec_hash(spec)
    # A second operator process (fresh Ledger on the same database) must not enqueue again.
    other = Ledger(ledger.storage)
    again = other.open(spec, namespace="ml", name="demo", uid="u1")
    waiting = again.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    number, params = other.ask(again, spec)
    assert number == 0
    assert params == {"lr": 0.01, "opt": "sgd", "momentum": 0.9}
    snap = other.snapshot(again)
    assert [(t.number, t.state, t.attempt, t.asked) for t in snap.trials] == [
        (0, "RUNNING", 0, True)
    ]


def test_a_resumed_seeded_study_does_not_replay_its_proposals(ledger: Ledger) -> None:
    """A restarted operator (or a second ``kubetune run``) opens the study afresh with the same
    seed: without a reseed it would propose the first process's parameters again."""
    spec = make_spec()
    study = ledger.open(spec, namespace="ml", name="demo", uid="u1")
    first = [ledger.ask(study, spec)[1] for _ in range(3)]
    other = Ledger(ledger.storage)  # the same seed, a fresh sampler
    again = other.open(spec, namespace="ml", name="demo", uid="u1")
    later = [other.ask(again, spec)[1] for _ in range(3)]
    assert not any(p in first for p in later), (first, later)
    fresh = Ledger(ledger.storage).open(spec, namespace="ml", name="demo", uid="u2")
    assert Ledger(ledger.storage).ask(fresh, spec)[1] == first[0]  # a new study: the seed holds


def test_a_changed_spec_keeps_the_stored_hash(ledger: Ledger) -> None:
    spec = make_spec()
    ledger.open(spec, namespace="ml", name="demo", uid="u1")
    fresh = Ledger(ledger.storage)
    changed = make_spec(high=0.5)
    study = fresh.open(changed, namespace="ml", name="demo", uid="u1")
    snap = fresh.snapshot(study)
    assert snap.spec_hash == spec_hash(spec) != spec_hash(changed)


def test_ask_tell_attempts_and_snapshot(ledger: Ledger) -> None:
    spec = make_spec()
    study = ledger.open(spec, namespace="ml", name="demo", uid="u1")
    numbers = [ledger.ask(study, spec)[0] for _ in range(4)]
    assert numbers == [0, 1, 2, 3]
    ledger.mark_job_created(study, 0, 0)
    ledger.set_attempt(study, 1, 1)
    ledger.mark_job_created(study, 1, 1)
    assert ledger.tell(study, 0, "COMPLETE", [0.8])
    assert not ledger.tell(study, 0, "COMPLETE", [0.8])  # already finished: harmless
    assert ledger.tell(study, 2, "FAIL", reason=R.EXIT_CODE, message="exit code 3\nboom")
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 3)
    study._storage.set_trial_intermediate_value(trial_id, 4, 0.5)
    ledger.record_usage(study, [RecordUsage(0, 1, 12.5), RecordUsage(2, 1, 3.0)])
    ledger.record_usage(study, [RecordUsage(0, 1, 12.5)])  # repeating changes nothing

    snap = Ledger(ledger.storage).snapshot(study)
    by = {t.number: t for t in snap.trials}
    assert by[0].state == "COMPLETE" and by[0].values == (0.8,) and by[0].job_created == 0
    assert by[1].state == "RUNNING" and by[1].attempt == 1 and by[1].job_created == 1
    assert by[2].state == "FAIL" and by[2].fail_reason == R.EXIT_CODE
    assert by[3].last_step == 4 and by[3].job_created == -1
    assert by[0].datetime_start is not None and by[0].datetime_start.tzinfo is not None
    assert {n: (u.attempts, u.gpu_seconds) for n, u in snap.usage.items()} == {
        0: (1, 12.5),
        2: (1, 3.0),
    }
    frozen = study.trials[2]
    assert frozen.user_attrs[FAIL_REASON_ATTR] == R.EXIT_CODE
    assert "boom" in frozen.user_attrs[FAIL_MESSAGE_ATTR]
    # Job creation confirmed after the trial finished is a no-op, not an error.
    ledger.mark_job_created(study, 0, 1)


def test_interrupted_ask_is_visible(ledger: Ledger) -> None:
    spec = make_spec()
    study = ledger.open(spec, namespace="ml", name="demo", uid="u1")
    study.ask()  # as if the operator died before suggesting parameters
    (trial,) = ledger.snapshot(study).trials
    assert trial.state == "RUNNING" and not trial.asked
    assert ATTEMPT_ATTR not in study.trials[0].user_attrs


def test_resolver_and_fail_running(ledger: Ledger) -> None:
    spec = make_spec()
    assert not ledger.exists(namespace="ml", name="demo", uid="u1")
    study = ledger.open(spec, namespace="ml", name="demo", uid="u1")
    assert ledger.exists(namespace="ml", name="demo", uid="u1")
    assert ledger.resolve("ml", "demo") is study
    assert ledger.resolve("ml", "other") is None
    ledger.ask(study, spec)
    ledger.ask(study, spec)
    ledger.tell(study, 0, "COMPLETE", [0.1])
    assert ledger.fail_running(study, R.STUDY_DELETED, "the TuningStudy was deleted") == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    ledger.forget("ml", "demo")
    assert ledger.resolve("ml", "demo") is None


def test_connection_pool_stays_small(fresh_database: str) -> None:
    storage = make_storage(fresh_database, pool_size=2, max_overflow=1)
    ledger = Ledger(storage)
    spec = make_spec()
    for i in range(12):
        study = ledger.open(spec, namespace="ml", name=f"s{i}", uid="u")
        ledger.ask(study, spec)
        ledger.snapshot(study)
    engine = storage.engine  # type: ignore[attr-defined]
    assert engine.pool.size() == 2
    assert engine.pool.checkedout() == 0


def test_bare_postgresql_urls_use_the_shipped_driver() -> None:
    url = "postgresql://u:p@h:5432/db"
    assert normalise_storage_url(url, have_psycopg3=False) == "postgresql+psycopg2://u:p@h:5432/db"
    assert normalise_storage_url(url, have_psycopg3=True) == url
    assert normalise_storage_url("postgres://h/db", have_psycopg3=False).startswith(
        "postgresql+psycopg2://"
    )
    for other in ("postgresql+psycopg2://h/db", "sqlite:///x.db", "mysql://h/db", "nonsense"):
        assert normalise_storage_url(other, have_psycopg3=False) == other


def test_make_storage_opens_a_bare_postgresql_url(fresh_database: str) -> None:
    """What users paste from a Secret (``postgresql://...``) works with psycopg2 alone."""
    bare = "postgresql://" + fresh_database.partition("://")[2]
    assert bare != fresh_database
    storage = make_storage(bare, pool_size=2, max_overflow=0)
    engine = storage.engine  # type: ignore[attr-defined]
    assert engine.dialect.driver == (
        "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    )
    assert optuna.get_all_study_names(storage=storage) == []


def test_incremental_snapshot_sees_trials_finished_elsewhere(
    ledger: Ledger, fresh_database: str
) -> None:
    """The snapshot caches finished trials; trials finished by another process (the report
    API, a second operator after a restart) must still show up, and a tell that lost the race
    answers False instead of overwriting."""
    spec = make_spec()
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    for _ in range(4):
        ledger.ask(study, spec)
    assert [t.state for t in ledger.snapshot(study).trials] == ["RUNNING"] * 4
    other = optuna.load_study(study_name=study.study_name, storage=fresh_database)
    other.tell(1, 0.5)
    other.tell(2, state=optuna.trial.TrialState.FAIL)
    assert ledger.tell(study, 0, "COMPLETE", [0.1])
    assert not ledger.tell(study, 1, "COMPLETE", [0.2])  # finished elsewhere: unchanged
    assert not ledger.tell(study, 2, "FAIL", reason="R", message="m")
    s2 = ledger.snapshot(study)
    assert [t.state for t in s2.trials] == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING"]
    assert s2.trials[1].values == (0.5,)
    ledger.mark_job_created(study, 1, 0)  # finished: a no-op, not an error
    ledger.mark_job_created(study, 3, 0)
    s3 = ledger.snapshot(study)
    assert s3.trials[3].job_created == 0
    assert s3.trials[0] is s2.trials[0]  # finished records are reused, not rebuilt


def _statements(ledger: Ledger) -> list[str]:
    """Every SQL statement the ledger's engine runs from now on (appended as they run)."""
    seen: list[str] = []
    engine = ledger.storage.engine  # type: ignore[attr-defined]
    sqlalchemy.event.listen(engine, "before_cursor_execute", lambda *a, **_: seen.append(str(a[2])))
    return seen


def test_incremental_snapshot_equals_a_full_read_after_every_kind_of_write(
    fresh_database: str,
) -> None:
    """Writes by this ledger, by the report API (intermediate values, tells) and by another
    process (new trials, tells) all show up; the incremental snapshot is the full read's."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    other = optuna.load_study(study_name=study.study_name, storage=fresh_database)
    expect = Ledger(ledger.storage, refresh_seconds=0)  # reads everything every time

    def beat(number: int, when: float) -> None:
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        study._storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, when)

    writes = [
        lambda: ledger.ask(study, spec),
        lambda: ledger.ask(study, spec),
        lambda: ledger.mark_job_created(study, 0, 0),
        lambda: ledger.set_attempt(study, 1, 1),
        lambda: study._storage.set_trial_intermediate_value(study.trials[1]._trial_id, 3, 0.2),
        other.ask,  # asked elsewhere (no attempt attr): an interrupted ask
        # The report API's heartbeats: attribute writes with no state change, read each pass.
        lambda: beat(2, 1_700_000_000.5),
        lambda: beat(2, 1_700_000_007.0),
        lambda: other.tell(0, 0.7),
        lambda: ledger.tell(study, 1, "FAIL", reason=R.EXIT_CODE, message="boom"),
        lambda: ledger.record_usage(study, [RecordUsage(1, 2, 4.5)]),
        lambda: ledger.ask(study, spec),
    ]
    for write in writes:
        write()
        assert ledger.snapshot(study) == expect.snapshot(study) == snapshot(study)
    final = ledger.snapshot(study)
    assert [t.state for t in final.trials] == ["COMPLETE", "FAIL", "RUNNING", "RUNNING"]
    assert final.trials[2].asked is False and final.trials[3].asked is True
    assert final.usage[1].gpu_seconds == 4.5
    assert final.trials[2].heartbeat is not None
    assert final.trials[2].heartbeat.timestamp() == 1_700_000_007.0


def test_an_idle_snapshot_is_one_light_query(ledger: Ledger) -> None:
    """Most passes follow no change: they must not re-read the RUNNING trials (the 30 x 50
    scale point spent 62.5 % of the operator's CPU doing so)."""
    spec = make_spec()
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    for _ in range(20):
        ledger.mark_job_created(study, ledger.ask(study, spec)[0], 0)
    first = ledger.snapshot(study)
    seen = _statements(ledger)
    again = ledger.snapshot(study)
    assert again == first and again.trials is first.trials
    assert len(seen) == 1 and "trial_params" not in seen[0], seen
    ledger.mark_job_created(study, 5, 0)  # one trial written: that one is read, no other
    seen.clear()
    assert ledger.snapshot(study) == first
    # The attributes are read for one trial id (one bound key), not for the 20 RUNNING.
    (attrs,) = [s for s in seen if s.startswith("SELECT trial_user_attributes.")]
    assert attrs.count("%(primary_keys_") == 1, attrs


def test_a_foreign_attribute_write_shows_within_refresh_seconds(fresh_database: str) -> None:
    """A change no state, new trial or own write reveals (another process's attribute
    write) waits for the periodic full read."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    ledger.ask(study, spec)
    assert ledger.snapshot(study).trials[0].job_created == -1
    other = optuna.load_study(study_name=study.study_name, storage=fresh_database)
    other._storage.set_trial_user_attr(other.trials[0]._trial_id, "kubetune:job_created", 0)
    assert ledger.snapshot(study).trials[0].job_created == -1  # not polled for
    ledger._refresh_seconds = 0
    assert ledger.snapshot(study).trials[0].job_created == 0


def test_a_parked_trial_is_released_to_waiting_and_asked_again_with_its_parameters(
    fresh_database: str,
) -> None:
    """Ask-ahead in the ledger: parked while it has no Job; released, Optuna's next ask pops
    it with the same parameters; a deleted study releases parked trials instead of failing
    them. The incremental snapshot equals a full read after each write."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    number, params = ledger.ask(study, spec, park=True)
    assert ledger.snapshot(study) == snapshot(study)
    assert ledger.snapshot(study).trials[0].parked is True
    ledger.release(study, number)
    released = ledger.snapshot(study).trials[0]
    assert (released.state, released.parked) == ("WAITING", False)
    assert ledger.snapshot(study) == snapshot(study)
    again, same = ledger.ask(study, spec)
    assert (again, same) == (number, params)
    assert ledger.snapshot(study).trials[0].parked is False
    parked, _ = ledger.ask(study, spec, park=True)
    launched, _ = ledger.ask(study, spec, park=True)
    ledger.mark_job_created(study, launched, 0)  # its Job exists: no longer parked
    snap = ledger.snapshot(study)
    assert snap == snapshot(study)
    assert [t.parked for t in snap.trials] == [False, True, False]
    assert ledger.fail_running(study, R.STUDY_DELETED, "deleted") == 2
    states = {t.number: t.state for t in snapshot(study).trials}
    assert states == {number: "FAIL", parked: "WAITING", launched: "FAIL"}
    # Asked again before any snapshot saw the release: still popped, not a new trial.
    assert ledger.ask(study, spec)[0] == parked
    # With no WAITING trial known, an ask skips Optuna's search for one: a new trial.
    ledger.snapshot(study)
    assert ledger.ask(study, spec)[0] == launched + 1
    assert ledger.snapshot(study) == snapshot(study)


def test_usage_of_an_older_study_is_still_read_and_shards_win(fresh_database: str) -> None:
    """Studies written before the shards keep their settled usage; a new settlement of the
    same trial is stored in its shard and wins over the old single map."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    study.set_user_attr(USAGE_ATTR, {"0": [1, 2.0], "1": [1, 3.0], "bad": "x"})
    assert {n: (u.attempts, u.gpu_seconds) for n, u in ledger.snapshot(study).usage.items()} == {
        0: (1, 2.0),
        1: (1, 3.0),
    }
    ledger.record_usage(study, [RecordUsage(1, 2, 7.5), RecordUsage(1500, 1, 1.0)])
    snap = ledger.snapshot(study)
    assert {n: (u.attempts, u.gpu_seconds) for n, u in snap.usage.items()} == {
        0: (1, 2.0),
        1: (2, 7.5),
        1500: (1, 1.0),
    }
    assert snap == Ledger(ledger.storage).snapshot(study) == snapshot(study)
    attrs = study.user_attrs
    assert attrs[USAGE_ATTR] == {"0": [1, 2.0], "1": [1, 3.0], "bad": "x"}  # never rewritten
    assert attrs[usage_shard(1)] == {"1": [2, 7.5]}
    assert attrs[usage_shard(1500)] == {"1500": [1, 1.0]}
    assert usage_shard(1) != usage_shard(1500)


def _usage_bytes_written(ledger: Ledger) -> list[int]:
    """Per statement that writes a study attribute: the bytes of the values it sends."""
    seen: list[int] = []
    engine = ledger.storage.engine  # type: ignore[attr-defined]

    def on_execute(*args: Any, **_: Any) -> None:
        statement, params = str(args[2]), args[3]
        if not statement.startswith(("INSERT INTO study_user", "UPDATE study_user")):
            return
        rows = params if isinstance(params, list | tuple) else [params]
        values = (v for row in rows for v in (row.values() if isinstance(row, dict) else row))
        seen.append(sum(len(v) for v in values if isinstance(v, str)))

    sqlalchemy.event.listen(engine, "before_cursor_execute", on_execute)
    return seen


def test_a_settlement_rewrites_one_shard_whatever_the_study_size(fresh_database: str) -> None:
    """One map for the whole study made each settlement rewrite every settled trial's entry
    (179 KB per trial at 10,000 trials): the bytes written per settlement must not grow with
    the settled trials, and the cached snapshot must equal a full read after each batch."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="demo", uid="u")
    ledger.snapshot(study)  # the cache holds the attributes: writes update it in place
    written = _usage_bytes_written(ledger)
    per_settlement = {}
    for settled in (1000, 4000):
        done = len(ledger.snapshot(study).usage)
        ledger.record_usage(study, [RecordUsage(n, 1, 0.5) for n in range(done, settled)])
        assert ledger.snapshot(study) == snapshot(study)
        written.clear()
        ledger.record_usage(study, [RecordUsage(settled - 1, 2, 1.25)])  # a full shard
        per_settlement[settled] = sum(written)
        assert ledger.snapshot(study) == Ledger(ledger.storage).snapshot(study)
    assert len(ledger.snapshot(study).usage) == 4000
    assert ledger.snapshot(study).usage[3999].gpu_seconds == 1.25
    # Shard 3's keys have four digits, shard 0's one to three: up to ~10 % more bytes.
    assert 0 < per_settlement[4000] < 1.2 * per_settlement[1000], per_settlement


def test_usage_shards_on_a_storage_without_sql() -> None:
    """Optuna's in-memory storage has no tables to lock: the shards are written one by one,
    with the same result as on PostgreSQL."""
    ledger = Ledger(optuna.storages.InMemoryStorage())
    study = ledger.open(make_spec(), namespace="ml", name="demo", uid="u")
    ledger.snapshot(study)
    ledger.record_usage(study, [RecordUsage(1, 1, 2.0), RecordUsage(1001, 1, 3.0)])
    ledger.record_usage(study, [RecordUsage(2, 1, 1.0)])
    assert study.user_attrs[usage_shard(2)] == {"1": [1, 2.0], "2": [1, 1.0]}
    assert study.user_attrs[usage_shard(1001)] == {"1001": [1, 3.0]}
    assert ledger.snapshot(study) == snapshot(study)
    assert sorted(ledger.snapshot(study).usage) == [1, 2, 1001]


def test_a_parked_ask_cut_short_is_finished_by_the_next_ask(fresh_database: str) -> None:
    """A trial asked ahead is marked parked before its parameters: cut short there, it reads
    as parked and not asked; released, the next ask pops it and suggests what is missing."""
    spec = make_spec()
    ledger = Ledger(make_storage(fresh_database), refresh_seconds=math.inf)
    study = ledger.open(spec, namespace="ml", name="cut", uid="u")
    ledger.snapshot(study)
    trial = study.ask()  # the ask's first step, then the operator dies
    study._storage.set_trial_user_attr(trial._trial_id, "kubetune:parked", True)
    cut = snapshot(study).trials[0]
    assert (cut.state, cut.parked, cut.asked, dict(cut.params)) == ("RUNNING", True, False, {})
    ledger.release(study, cut.number)
    number, params = ledger.ask(study, spec)
    assert number == cut.number and "lr" in params and "opt" in params
    done = ledger.snapshot(study).trials[0]
    assert (done.state, done.parked, done.asked) == ("RUNNING", False, True)
    assert ledger.snapshot(study) == snapshot(study)
