"""One local study's shell: observe the trial processes and the ledger, call the operator's
``decide``, apply its actions (as ``kubetune.apply`` does in a cluster). ``kubetune.local``
runs the loop around it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from rich.console import Console

from kubetune import reasons as R  # noqa: N812 - short, read like an enum
from kubetune._local_plan import trial_command, trial_env
from kubetune.jobs import job_name
from kubetune.ledger import STORAGE_ERRORS, Ledger
from kubetune.local_trials import TrialProcesses
from kubetune.reconcile import (
    CreateJob,
    Decision,
    DeleteJob,
    EventSpec,
    RelaunchAttempt,
    ReleaseParked,
    SuspendJob,
    Tell,
    VerifyJobGone,
    decide,
)
from kubetune.reporting import ReportServer
from kubetune.sampling import grid_trials
from kubetune.status import format_time
from kubetune.tokens import TokenSigner, generate_key

if TYPE_CHECKING:
    from kubetune.spec import TuningStudy, TuningStudySpec

__all__ = ["INTERRUPTED", "LOCAL_NAMESPACE", "START_TIME_ATTR", "LocalStudy"]

#: Study user attr: unix time of the study's first local start (``deadlineSeconds`` counts
#: from it, across resumed runs).
START_TIME_ATTR = "kubetune:start_time"
#: Fail reason for trials stopped by Ctrl-C / SIGTERM (local mode only).
INTERRUPTED = "Interrupted"
LOCAL_NAMESPACE = "local"


class LocalStudy:
    """The local shell: observe processes and ledger, call ``decide``, apply its actions."""

    def __init__(
        self,
        ts: TuningStudy,
        spec: TuningStudySpec,
        ledger: Ledger,
        study: optuna.Study,
        *,
        console: Console,
        log_dir: Path,
        base_env: Mapping[str, str],
        procs: TrialProcesses,
        wall_clock: Callable[[], float],
    ) -> None:
        self.spec, self.ledger, self.study = spec, ledger, study
        self.name = ts.metadata.name
        self.namespace = ts.metadata.namespace or LOCAL_NAMESPACE
        self.console, self.log_dir, self.base_env = console, log_dir, base_env
        self.procs, self.wall_clock = procs, wall_clock
        self.container = spec.trial.trainer_container()
        self.grid = grid_trials(spec)
        self.status: dict[str, Any] = {}
        #: (trial, attempt) whose process is known to be gone (a hard-killed earlier run's).
        self.gone: set[tuple[int, int]] = set()
        self.signer = TokenSigner(generate_key())
        self.server: ReportServer | None = None
        self.reports_since: datetime | None = None
        self.threads = max(1, (os.cpu_count() or 1) // max(1, spec.budget.parallelism))

    # -- setup -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Record the first start (the deadline counts from it), serve the report API."""
        study = self.study
        start = study.user_attrs.get(START_TIME_ATTR)
        if not isinstance(start, int | float):
            start = self.wall_clock()
            study.set_user_attr(START_TIME_ATTR, start)
            with warnings.catch_warnings():  # set_metric_names is experimental in Optuna
                warnings.simplefilter("ignore")
                study.set_metric_names([o.name for o in self.spec.objectives])
        self.status = {"startTime": format_time(datetime.fromtimestamp(float(start), UTC))}
        if self.spec.trial.result.from_ == "Reporter":
            self.server = ReportServer(self.ledger.resolve, self.signer)
            self.server.start()
            self.reports_since = datetime.fromtimestamp(self.wall_clock(), UTC)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- one pass ----------------------------------------------------------------------------

    def reconcile(self) -> Decision:
        """Observe the processes (first: a trainer reports before it exits), then the ledger;
        decide; apply."""
        jobs = self.procs.observe()
        snap = self.ledger.snapshot(self.study)
        now = datetime.fromtimestamp(self.wall_clock(), UTC)
        decision = decide(
            self.spec,
            None,
            jobs,
            snap,
            now,
            previous_status=self.status,
            gone=self.gone,
            grid_trials=self.grid,
            reports_since=self.reports_since,
        )
        self.apply(decision)
        self.procs.forget_settled(snap)
        self.status = decision.status
        return decision

    def apply(self, decision: Decision) -> None:
        """In the decision's order (see :class:`~kubetune.reconcile.Decision`)."""
        for parked in decision.parked_launches:
            self.start(parked.trial, 0, parked.params)
        if decision.usage:
            self.ledger.record_usage(self.study, decision.usage)
        for a in decision.steps:
            if isinstance(a, Tell):
                self.ledger.tell(
                    self.study, a.trial, a.state, a.values, reason=a.reason, message=a.message
                )
            elif isinstance(a, RelaunchAttempt):
                self.ledger.set_attempt(self.study, a.trial, a.attempt)
                self.start(a.trial, a.attempt, a.params)
            elif isinstance(a, CreateJob):
                self.start(a.trial, a.attempt, a.params)
            elif isinstance(a, VerifyJobGone):
                if not self.procs.has(job_name(self.name, a.trial, a.attempt)):
                    self.gone.add((a.trial, a.attempt))
            elif isinstance(a, DeleteJob):
                self.procs.delete(a.name)
            elif isinstance(a, SuspendJob):
                self.procs.suspend(a.name, a.suspend)
            elif isinstance(a, ReleaseParked):
                self.ledger.release(self.study, a.trial)
        for _ in range(decision.launches):
            self.launch()
        for event in decision.events:
            self.announce(event)
        for _ in range(decision.park):
            self.launch(park=True)

    def launch(self, *, park: bool = False) -> None:
        """Ask for a trial and start it (``park``: only ask; a later pass starts it). A failed
        ask (a sampler that cannot sample the space) leaves a half-asked trial, which the next
        pass fails (``AskInterrupted``)."""
        try:
            number, params = self.ledger.ask(self.study, self.spec, park=park)
        except STORAGE_ERRORS:
            raise
        except Exception as exc:
            self.console.print(f"[yellow]warning:[/yellow] asking for a trial failed: {exc}")
            return
        if not park:
            self.start(number, 0, params)

    def start(self, trial: int, attempt: int, params: Mapping[str, Any]) -> None:
        """Start the attempt's process, then record that its "Job" exists."""
        stem = self.log_dir / (f"trial-{trial}" + (f"-r{attempt}" if attempt else ""))
        server = self.server
        termination = None if server else stem.with_name(stem.name + ".termination-log")
        token = self.signer.issue(self.namespace, self.name, trial, attempt) if server else None
        env, _ = trial_env(
            self.base_env,
            params,
            namespace=self.namespace,
            study=self.name,
            number=trial,
            attempt=attempt,
            report_url=server.base_url if server else None,
            token=token,
            termination_log=str(termination) if termination is not None else None,
            container_env=self.container.get("env") or [],
            threads=self.threads,
        )
        argv = trial_command(self.container, env, sys.executable)
        logs = (stem.with_name(stem.name + ".out"), stem.with_name(stem.name + ".err"), termination)
        name = job_name(self.name, trial, attempt)
        self.procs.start(name, trial, attempt, argv=argv, env=env, logs=logs)
        self.ledger.mark_job_created(self.study, trial, attempt)

    def announce(self, event: EventSpec) -> None:
        """Warnings reach the console (one line each), as Events reach ``kubectl describe``."""
        if event.type == "Warning":
            line = event.message.splitlines()[0] if event.message else ""
            self.console.print(f"[yellow]{event.reason}[/yellow]: {line}")

    def interrupt(self, why: str) -> None:
        """Stop every process and fail its trial with ``Interrupted`` (Ctrl-C, lost storage);
        trials asked ahead go back to WAITING (the next run asks them first)."""
        for trial, _attempt, output in self.procs.stop_all():
            message = f"{why}\nlog tail:\n{output}" if output else why
            with contextlib.suppress(*STORAGE_ERRORS):
                self.ledger.tell(self.study, trial, "FAIL", reason=INTERRUPTED, message=message)
        with contextlib.suppress(*STORAGE_ERRORS):
            self.ledger.release_parked(self.study)

    def outcome(self) -> str:
        """Why the study stopped: the ``Ready`` condition's reason and message."""
        for c in self.status.get("conditions") or []:
            if c.get("type") == R.COND_READY:
                return f"{c.get('reason')}: {c.get('message')}"
        return str(self.status.get("message") or "")
