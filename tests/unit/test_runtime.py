"""Per-study memory lives in one object with one lifetime (made on first use, released whole)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from kubetune.event_posting import EventPoster
from kubetune.jobs import study_label
from kubetune.runtime import Runtime


def _runtime() -> Runtime:
    none: Any = None
    return Runtime(
        config=none,
        ledger=none,
        signer=none,
        metrics=none,
        registry=none,
        api=none,
        executor=concurrent.futures.ThreadPoolExecutor(max_workers=1),
        events=EventPoster(none),
    )


def test_a_study_state_is_keyed_by_its_label_and_released_whole() -> None:
    rt = _runtime()
    name = "a" * 80  # longer than a label value: hashed
    state = rt.study("ns", name)
    state.expected["job-0"] = (0, 0, 1.0)
    assert rt.peek("ns", study_label(name)) is state
    assert rt.study("ns", name) is state
    rt.wake("ns", study_label(name))
    assert state.wake.is_set()
    rt.release("ns", name)
    assert rt.peek("ns", study_label(name)) is None
    assert rt.studies == {}


def test_events_for_unknown_studies_make_no_state() -> None:
    rt = _runtime()
    rt.wake("ns", "nobody")
    rt.wake(None, None)
    assert rt.peek("ns", "nobody") is None
    assert rt.studies == {}
