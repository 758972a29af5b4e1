"""Trial processes of ``kubetune run``: what the kubelet and the Job controller do in a cluster.

Each trial attempt runs as one process group, named as the operator names its Job. This
module starts them, enforces ``activeDeadlineSeconds`` (SIGTERM, then SIGKILL after a grace
period, as a pod's ``terminationGracePeriodSeconds``), stops them when the decision deletes
their "Job", pauses them with SIGSTOP when it suspends one, and reports each as an
:class:`~kubetune.observed_job.ObservedJob`. ``kubetune.reconcile.decide`` then judges local
trials by exactly the rules it judges cluster Jobs by.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from kubetune._local_plan import tail
from kubetune.observed_job import FailureKind, ObservedJob
from kubetune.status import LedgerSnapshot

__all__ = ["GRACE_SECONDS", "TrialProcesses"]

#: Seconds between SIGTERM and SIGKILL, as a pod's terminationGracePeriodSeconds would.
GRACE_SECONDS = 3.0
#: Exit code of a command that cannot be started (a shell's "command not found").
CANNOT_START = 127


@dataclass
class _Process:
    """One trial attempt's process group and what is known of its end."""

    name: str
    trial: int
    attempt: int
    proc: subprocess.Popen[bytes] | None
    started: float
    started_at: datetime
    stdout: Path
    stderr: Path
    termination_log: Path | None
    files: list[IO[bytes]] = field(default_factory=list)
    deadline_passed: bool = False
    term_sent: float | None = None
    deleting: bool = False
    suspended: bool = False
    exit_code: int | None = None
    ended_at: datetime | None = None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def terminate(self, now: float) -> None:
        """SIGTERM now (and SIGCONT, so a paused trainer can act on it); SIGKILL comes later."""
        if self.term_sent is None:
            self.term_sent = now
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files.clear()


class TrialProcesses:
    """The local trial "Jobs": started, watched, stopped and paused here, judged elsewhere."""

    def __init__(
        self,
        *,
        active_deadline_seconds: int | None,
        cwd: str | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.active_deadline_seconds = active_deadline_seconds
        self.cwd = cwd
        self.clock = clock
        self.wall_clock = wall_clock
        self._procs: dict[str, _Process] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_clock(), UTC)

    def start(
        self,
        name: str,
        trial: int,
        attempt: int,
        *,
        argv: Sequence[str],
        env: Mapping[str, str],
        logs: tuple[Path, Path, Path | None],
    ) -> None:
        """Start the attempt; one that cannot start ends at once with exit code 127."""
        stdout, stderr, termination_log = logs
        if termination_log is not None:
            termination_log.write_text("")
        out, err = stdout.open("wb"), stderr.open("wb")
        p = _Process(name, trial, attempt, None, self.clock(), self._now(), *logs, [out, err])
        try:
            p.proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            err.write(f"cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            p.exit_code, p.ended_at = CANNOT_START, p.started_at
            p.close()
        self._procs[name] = p

    def poll(self) -> bool:
        """Enforce deadlines and collect exits between passes; True when a process ended."""
        now = self.clock()
        ended = False
        for p in self._procs.values():
            if p.exit_code is None:
                self._enforce(p, now)
                self._collect(p)
                ended = ended or p.exit_code is not None
        return ended

    def running(self) -> int:
        """Processes still alive (their trials hold slots, or are on their way out)."""
        return sum(1 for p in self._procs.values() if p.exit_code is None)

    def observe(self) -> list[ObservedJob]:
        """Enforce deadlines and grace periods, collect exits, and describe every process."""
        now = self.clock()
        jobs: list[ObservedJob] = []
        for name, p in list(self._procs.items()):
            self._enforce(p, now)
            self._collect(p)
            if p.deleting and p.exit_code is not None:
                del self._procs[name]  # a deleted Job is gone from the API
                continue
            jobs.append(self._observed(p))
        return jobs

    def _enforce(self, p: _Process, now: float) -> None:
        deadline = self.active_deadline_seconds
        if p.exit_code is not None:
            return
        if deadline is not None and not p.deadline_passed and now - p.started > deadline:
            p.deadline_passed = True
            p.terminate(now)
        elif p.term_sent is not None and now - p.term_sent > GRACE_SECONDS:
            p.signal(signal.SIGKILL)

    def _collect(self, p: _Process) -> None:
        if p.exit_code is not None or p.proc is None:
            return
        code = p.proc.poll()
        if code is None:
            return
        # As a container runtime reports it: killed by signal n -> 128 + n.
        p.exit_code = 128 - code if code < 0 else code
        p.ended_at = self._now()
        p.close()
        if p.term_sent is not None:
            p.signal(signal.SIGKILL)  # leftovers of the process group

    def _observed(self, p: _Process) -> ObservedJob:
        if p.exit_code is None:
            return ObservedJob(
                p.name,
                p.trial,
                p.attempt,
                "Suspended" if p.suspended else "Active",
                start_time=p.started_at,
                deleting=p.deleting,
                running_since=None if p.suspended else p.started_at,
            )
        failure: FailureKind | None = None
        if p.deadline_passed:
            failure = "DeadlineExceeded"
        elif p.exit_code != 0:
            failure = "UserError"
        message = None
        if failure is None and p.termination_log is not None:
            message = p.termination_log.read_text("utf-8", "replace") or None
        return ObservedJob(
            p.name,
            p.trial,
            p.attempt,
            "Failed" if failure else "Succeeded",
            failure=failure,
            exit_code=p.exit_code,
            start_time=p.started_at,
            completion_time=p.ended_at,
            termination_message=message,
            log_tail=_output(p) if failure else None,
        )

    def delete(self, name: str) -> None:
        """The decision deleted this Job: stop its process (it disappears once it exited)."""
        p = self._procs.get(name)
        if p is None:
            return
        p.deleting = True
        if p.exit_code is None:
            p.terminate(self.clock())

    def suspend(self, name: str, suspend: bool) -> None:
        """Pause (SIGSTOP) or resume (SIGCONT) the attempt, as ``spec.suspend`` on a Job."""
        p = self._procs.get(name)
        if p is None or p.exit_code is not None or p.suspended == suspend:
            return
        p.suspended = suspend
        p.signal(signal.SIGSTOP if suspend else signal.SIGCONT)

    def has(self, name: str) -> bool:
        return name in self._procs

    def forget_settled(self, ledger: LedgerSnapshot) -> None:
        """Drop ended processes whose GPU time the ledger has settled: nothing reads them now."""
        for name, p in list(self._procs.items()):
            usage = ledger.usage.get(p.trial)
            if p.exit_code is not None and usage is not None and usage.attempts > p.attempt:
                del self._procs[name]

    def stop_all(self) -> list[tuple[int, int, str]]:
        """SIGTERM every live process, SIGKILL after the grace period; returns the (trial,
        attempt, output tail) of each one stopped."""
        live = [p for p in self._procs.values() if p.exit_code is None]
        now = self.clock()
        for p in live:
            p.terminate(now)
        for p in live:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                p.signal(signal.SIGKILL)
                p.proc.wait()
            self._collect(p)
        self._procs.clear()
        return [(p.trial, p.attempt, _output(p)) for p in live]


def _output(p: _Process) -> str:
    """The end of the trainer's stderr, or of its stdout when stderr is empty."""
    err = p.stderr.read_bytes() if p.stderr.exists() else b""
    if err.strip():
        return tail(err)
    return tail(p.stdout.read_bytes()) if p.stdout.exists() else ""
