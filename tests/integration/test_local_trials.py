"""``kubetune.local_trials``: real processes observed as the Jobs ``decide`` judges.

Each test starts real (tiny) Python processes and waits on their state with a generous
deadline; nothing depends on how fast the machine is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kubetune.local_trials import CANNOT_START, TrialProcesses
from kubetune.observed_job import ObservedJob
from kubetune.status import LedgerSnapshot, TrialUsage
from support.hold import WAIT_SECONDS


class Clock:
    """A monotonic clock the test can move forward (``activeDeadlineSeconds``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def procs(
    clock: Callable[[], float] = time.monotonic, deadline: int | None = None
) -> TrialProcesses:
    return TrialProcesses(
        active_deadline_seconds=deadline, cwd=None, clock=clock, wall_clock=time.time
    )


def start(tp: TrialProcesses, tmp: Path, name: str, code: str, *, tm: bool = False) -> None:
    logs = (tmp / f"{name}.out", tmp / f"{name}.err", tmp / f"{name}.tm" if tm else None)
    env = {**os.environ, "TM": str(logs[2])}
    tp.start(name, 0, 0, argv=[sys.executable, "-c", code], env=env, logs=logs)


def settled(tp: TrialProcesses, name: str, pred: Callable[[ObservedJob], bool]) -> ObservedJob:
    """Observe until the Job ``name`` satisfies ``pred`` (fails with the last observation)."""
    give_up = time.monotonic() + WAIT_SECONDS
    last: ObservedJob | None = None
    while time.monotonic() < give_up:
        jobs = {j.name: j for j in tp.observe()}
        last = jobs.get(name)
        if last is not None and pred(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached the expected state; last seen {last}")


def test_exits_become_succeeded_and_failed_jobs(tmp_path: Path) -> None:
    tp = procs()
    start(
        tp,
        tmp_path,
        "ok",
        "import os; open(os.environ['TM'], 'w').write('{\"values\": [1]}')",
        tm=True,
    )
    start(tp, tmp_path, "crash", "import sys; print('boom', file=sys.stderr); sys.exit(3)")
    start(tp, tmp_path, "quiet", "print('only stdout'); raise SystemExit(4)")
    ok = settled(tp, "ok", lambda j: j.phase != "Active")
    assert (ok.phase, ok.exit_code, ok.termination_message) == ("Succeeded", 0, '{"values": [1]}')
    assert ok.completion_time is not None and ok.start_time is not None
    crash = settled(tp, "crash", lambda j: j.phase != "Active")
    assert (crash.phase, crash.failure, crash.exit_code) == ("Failed", "UserError", 3)
    assert crash.log_tail is not None and "boom" in crash.log_tail
    quiet = settled(tp, "quiet", lambda j: j.phase != "Active")
    assert quiet.log_tail is not None and "only stdout" in quiet.log_tail  # stderr was empty
    assert tp.running() == 0


def test_a_command_that_cannot_start_fails_like_a_container_that_cannot(tmp_path: Path) -> None:
    tp = procs()
    logs = (tmp_path / "x.out", tmp_path / "x.err", None)
    tp.start("x", 0, 0, argv=[str(tmp_path / "no-such-binary")], env={}, logs=logs)
    job = settled(tp, "x", lambda j: True)
    assert (job.phase, job.failure, job.exit_code) == ("Failed", "UserError", CANNOT_START)
    assert job.log_tail is not None and "cannot start" in job.log_tail


def test_active_deadline_kills_the_process_and_says_why(tmp_path: Path) -> None:
    clock = Clock()
    tp = procs(clock, deadline=60)
    start(tp, tmp_path, "slow", "import time; time.sleep(600)")
    running = settled(tp, "slow", lambda j: j.phase == "Active")
    assert running.running_since is not None
    clock.offset = 61.0  # the trial has now run past activeDeadlineSeconds
    job = settled(tp, "slow", lambda j: j.phase == "Failed")
    assert job.failure == "DeadlineExceeded"


def test_a_deleted_job_stops_and_disappears(tmp_path: Path) -> None:
    tp = procs()
    start(tp, tmp_path, "doomed", "import time; time.sleep(600)")
    settled(tp, "doomed", lambda j: j.phase == "Active")
    tp.delete("doomed")
    give_up = time.monotonic() + WAIT_SECONDS
    while tp.has("doomed") and time.monotonic() < give_up:
        seen = [j for j in tp.observe() if j.name == "doomed"]
        assert all(j.deleting for j in seen)  # while it exits it holds no slot
        time.sleep(0.05)
    assert not tp.has("doomed") and tp.running() == 0


def test_suspend_pauses_the_process_and_resume_continues_it(tmp_path: Path) -> None:
    tp = procs()
    marker = tmp_path / "ticks"
    code = (
        f"import time\nwhile True:\n    open({str(marker)!r}, 'a').write('.')\n    time.sleep(0.05)"
    )
    start(tp, tmp_path, "pausable", code)
    settled(tp, "pausable", lambda j: marker.exists())
    tp.suspend("pausable", True)
    job = settled(tp, "pausable", lambda j: j.phase == "Suspended")
    assert job.running_since is None  # a suspended Job uses no GPU time
    time.sleep(0.3)
    size = marker.stat().st_size
    time.sleep(0.5)
    assert marker.stat().st_size == size  # stopped: no tick while suspended
    tp.suspend("pausable", False)
    settled(tp, "pausable", lambda j: j.phase == "Active" and marker.stat().st_size > size)
    stopped = tp.stop_all()
    assert [(t, a) for t, a, _ in stopped] == [(0, 0)] and tp.running() == 0


def test_ended_processes_are_forgotten_once_their_usage_is_settled(tmp_path: Path) -> None:
    tp = procs()
    start(tp, tmp_path, "done", "pass")
    settled(tp, "done", lambda j: j.phase == "Succeeded")
    tp.forget_settled(LedgerSnapshot("s", (), None, {}))
    assert tp.has("done")  # not settled yet: decide must still see it to settle it
    tp.forget_settled(LedgerSnapshot("s", (), None, {0: TrialUsage(1, 0.0)}))
    assert not tp.has("done")
