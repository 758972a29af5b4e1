"""The kopf shell's own settings: what it logs of the trial Jobs' and Pods' events."""

from __future__ import annotations

import logging

import pytest

from kubetune.handlers import _quiet_child_events


def test_child_event_successes_are_not_logged_and_everything_else_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kopf_objects = logging.getLogger("test.kopf.objects")
    _quiet_child_events(kopf_objects)
    _quiet_child_events(kopf_objects)  # a second start-up in the same process adds nothing
    assert len(kopf_objects.filters) == 1
    with caplog.at_level(logging.DEBUG, logger="test.kopf.objects"):
        kopf_objects.info("Handler 'job_event' succeeded.")
        kopf_objects.info("Handler 'pod_event' succeeded.")
        kopf_objects.info("Handler 'study_daemon' succeeded.")
        kopf_objects.error("Handler 'job_event' failed with an exception and will ignore it")
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'study_daemon' succeeded.",
        "Handler 'job_event' failed with an exception and will ignore it",
    ]
