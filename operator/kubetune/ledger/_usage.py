"""GPU-seconds settled per trial, stored as study user attrs in shards of trials.

Finished trials cannot take new attrs, so usage lives on the study. One map for the whole
study (``kubetune:usage``) made every settlement rewrite an entry per settled trial: 179 KB
per trial at 10,000 trials, O(N²) bytes over a study (benchmarks/README.md, 7.). A shard
``kubetune:usage:<k>`` holds trials ``k * USAGE_SHARD_TRIALS`` and up, so a settlement
rewrites one small shard whatever the study's size. The single map of older studies is
still read (never written); a shard's entry wins over it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from optuna.storages._rdb import models as _models  # private: one transaction for all shards
from optuna.storages._rdb.storage import _create_scoped_session

from kubetune.status import TrialUsage

if TYPE_CHECKING:
    import optuna

    from kubetune.reconcile import RecordUsage

#: The single usage map of studies written before the shards (read only).
USAGE_ATTR = "kubetune:usage"
USAGE_SHARD_PREFIX = f"{USAGE_ATTR}:"
#: Trials per shard: ~18 KB of JSON for a full shard.
USAGE_SHARD_TRIALS = 1000

#: ``{"<number>": [attempts_settled, gpu_seconds]}``, as stored in one attr.
UsageMap = dict[str, list[Any]]


def usage_shard(number: int) -> str:
    """The study attr that holds trial ``number``'s usage."""
    return f"{USAGE_SHARD_PREFIX}{number // USAGE_SHARD_TRIALS}"


def is_usage_attr(key: str) -> bool:
    return key == USAGE_ATTR or key.startswith(USAGE_SHARD_PREFIX)


def parse_usage(raw: Any) -> dict[int, TrialUsage]:
    """One stored map as records; malformed entries are skipped."""
    out: dict[int, TrialUsage] = {}
    if not isinstance(raw, Mapping):
        return out
    for key, value in raw.items():
        try:
            attempts, seconds = value
            out[int(key)] = TrialUsage(int(attempts), float(seconds))
        except (TypeError, ValueError):
            continue
    return out


def stored_usage(attrs: Mapping[str, Any]) -> dict[int, TrialUsage]:
    """The study's usage from its user attrs: the old single map, then every shard over it."""
    out = parse_usage(attrs.get(USAGE_ATTR))
    for key in sorted(k for k in attrs if k.startswith(USAGE_SHARD_PREFIX)):
        out.update(parse_usage(attrs[key]))
    return out


def _by_shard(records: Iterable[RecordUsage]) -> dict[str, UsageMap]:
    out: dict[str, UsageMap] = {}
    for r in records:
        out.setdefault(usage_shard(r.trial), {})[str(r.trial)] = [r.attempts, r.gpu_seconds]
    return out


def _as_map(raw: Any) -> UsageMap:
    return dict(raw) if isinstance(raw, Mapping) else {}


def write_usage(
    backend: optuna.storages.RDBStorage | None, study: optuna.Study, records: Iterable[RecordUsage]
) -> dict[int, TrialUsage]:
    """Merge ``records`` into their shards; returns the shards' entries as now stored.

    On an RDB storage the shards touched are read (locked) and written in one transaction,
    so a settlement batch is stored whole or not at all; other storages (in-memory, for
    tests and ``kubetune run`` without a database) write shard by shard.
    """
    updates = _by_shard(records)
    if backend is None:
        attrs = study.user_attrs
        written = {k: {**_as_map(attrs.get(k)), **v} for k, v in updates.items()}
        for key, merged in written.items():
            study.set_user_attr(key, merged)
    else:
        written = _write_rdb(backend, study._study_id, updates)
    out: dict[int, TrialUsage] = {}
    for merged in written.values():
        out.update(parse_usage(merged))
    return out


def _write_rdb(
    backend: optuna.storages.RDBStorage, study_id: int, updates: Mapping[str, UsageMap]
) -> dict[str, UsageMap]:
    model = _models.StudyUserAttributeModel
    written: dict[str, UsageMap] = {}
    with _create_scoped_session(backend.scoped_session) as session:
        query = session.query(model).filter(
            model.study_id == study_id, model.key.in_(sorted(updates))
        )
        rows: dict[str, Any] = {str(row.key): row for row in query.with_for_update().all()}
        for key, entries in updates.items():
            row = rows.get(key)
            merged = {**(_as_map(json.loads(row.value_json)) if row else {}), **entries}
            text = json.dumps(merged, separators=(",", ":"))
            if row is None:
                session.add(model(study_id=study_id, key=key, value_json=text))
            else:
                row.value_json = text
            written[key] = merged
    return written
