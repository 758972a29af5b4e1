"""The glue between the report API and the reconcile loop.

The report API (:mod:`kubetune.reporting`) finds studies through :func:`resolve_study` and
tells the operator what happened through :func:`on_report_event`: request counts for the
metrics, and finished trials, which get their outcome Event (the same message rule as the
reconcile's, ``reconcile.reported_outcome_event``) and wake the study's loop at once (the
next trial launches without waiting for the Job to end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import optuna

from kubetune.jobs import study_label
from kubetune.reconcile import reported_outcome_event
from kubetune.runtime import Runtime
from kubetune.status import TrialRecord

__all__ = ["STARTUP_GRACE_SECONDS", "on_report_event", "resolve_study"]

logger = logging.getLogger("kubetune.operator")

#: After a start, the report API answers 503 (retry) rather than 404 for a study it has not
#: opened yet: kopf has not listed the TuningStudies so far, and trainers must not give up.
STARTUP_GRACE_SECONDS = 30.0


def resolve_study(rt: Runtime, namespace: str, name: str) -> optuna.Study | None:
    """The report API's resolver: the opened study, else "retry later" while it may open.

    A restarted operator opens each study on its first reconcile; until then a trainer's
    report must be retried (503), not refused (404), or the SDK would give up on the trial.
    """
    study = rt.ledger.resolve(namespace, name)
    state = rt.peek(namespace, study_label(name))
    if study is None and (
        (state is not None and state.known) or time.monotonic() - rt.started < STARTUP_GRACE_SECONDS
    ):
        raise optuna.exceptions.StorageInternalError(
            f"study {namespace}/{name} is not opened yet by this operator"
        )
    return study


def on_report_event(
    rt: Runtime, kind: str, namespace: str, study: str, number: int | None, **fields: Any
) -> None:
    """Report API hook: count requests; when a trial finished, its Event, and wake the study."""
    if kind == "request":
        code = int(fields.get("code", 0))
        rt.metrics.report_request(str(fields.get("action", "")), code)
        if code == 200:  # an accepted report or heartbeat is progress (KubetuneStudyStalled)
            rt.metrics.record_progress(namespace, study, time.time())
    elif kind == "trial_finished":
        state = str(fields.get("state", ""))
        if number is None:
            rt.metrics.trial_finished(namespace, study, state, duration_seconds=0.0)
        else:
            # The duration and the Event's text come from the ledger (blocking): off the loop.
            task = asyncio.get_running_loop().create_task(
                _reported_finish(rt, namespace, study, number, state)
            )
            rt.tasks.add(task)
            task.add_done_callback(rt.tasks.discard)
        rt.metrics.record_progress(namespace, study, time.time())
        rt.wake(namespace, study_label(study))


async def _reported_finish(rt: Runtime, namespace: str, name: str, number: int, state: str) -> None:
    """Count the outcome the report API told, with its duration, and post its Event.

    Both read the one finished trial. Its GPU time is counted when its Job is settled
    (``apply.count_settled_usage``), the same figure the status shows.
    """
    record: TrialRecord | None = None
    study = rt.ledger.resolve(namespace, name)
    if study is not None:
        try:
            record = await rt.db(rt.ledger.trial, study, number)
        except Exception as e:  # a metric or an Event must not break anything
            logger.warning(
                "Could not read trial study=%s/%s trial=%d error=%s",
                namespace,
                name,
                number,
                type(e).__name__,
            )
    rt.metrics.trial_finished(namespace, name, state, duration_seconds=_duration(record))
    event = reported_outcome_event(record) if record is not None else None
    if event is not None:
        rt.announce(namespace, name, event)


def _duration(record: TrialRecord | None) -> float:
    """Wall time of a finished trial, all attempts (0 when unknown)."""
    if record is None or record.datetime_start is None or record.datetime_complete is None:
        return 0.0
    return max(0.0, (record.datetime_complete - record.datetime_start).total_seconds())
