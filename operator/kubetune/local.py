"""``kubetune run``: the same TuningStudy manifest, trials as local processes, no cluster.

Optuna storage (SQLite by default, PostgreSQL works too) is the ledger, so a second run of the
same command resumes: trials already in the study count against ``maxTrials``. In Reporter mode
the runner serves the report API on 127.0.0.1 (``kubetune.reporting``), so the trainer talks to
the same API as in a cluster; in TerminationMessage mode it reads ``{"values": [...]}`` from a
file named by ``KUBETUNE_TERMINATION_LOG``.

A trial that crashes, hangs past ``activeDeadlineSeconds``, goes silent (no report, no
heartbeat) past ``heartbeatTimeoutSeconds``, exits without a result or writes garbage becomes
a FAIL trial with ``kubetune:fail_reason`` and ``kubetune:stderr_tail``; the
study goes on. The study ends on the operator's rules (docs/architecture.md, "How a study
ends"): ``maxFailedTrials`` and ``deadlineSeconds`` also stop the running trials (reason
``StudyStopped``), a Grid study ends once every point was tried (``SearchSpaceExhausted``),
and one that reaches its ``objectives[].goal`` ends at once (``GoalReached``).
Ctrl-C (or SIGTERM) stops the running trials, fails them with reason ``Interrupted`` and
returns exit code 130 with the storage intact.

Local-mode specifics: the namespace is ``local`` unless the manifest names one; the Optuna
study is named after ``metadata.name``; ``deadlineSeconds`` counts from the study's first
local start (study user attr ``kubetune:start_time``), so a resumed study keeps its deadline;
each trial gets ``OMP_NUM_THREADS = cpus // parallelism`` unless the caller's environment
sets it; trial stdout/stderr go to ``trial-<n>.out``/``.err`` in a log folder (a temp folder
unless ``log_dir`` is given). Trials left RUNNING by a hard-killed earlier run (marked with
``kubetune:runner = local``) are failed with reason ``Interrupted`` on the next start.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubetune import reasons
from kubetune._local_plan import (
    Budget,
    Counts,
    normalise_storage_url,
    parse_termination_message,
    plan_launches,
    tail,
    trial_command,
    trial_env,
)
from kubetune.reconcile import goal_reached
from kubetune.reporting import FAIL_REASON_ATTR, HEARTBEAT_ATTR, ReportServer
from kubetune.sampling import (
    directions,
    grid_trials,
    make_pruner,
    make_sampler,
    sampler_unavailable,
)
from kubetune.search_space import suggest_params
from kubetune.spec import load_manifest
from kubetune.status import TrialRecord
from kubetune.tokens import TokenSigner, generate_key

if TYPE_CHECKING:
    from kubetune.spec import TuningStudy

__all__ = [
    "INTERRUPTED",
    "RUNNER_ATTR",
    "STDERR_TAIL_ATTR",
    "LocalResult",
    "LocalRunError",
    "default_storage",
    "run_local",
]

#: Trial user attr: the last ~2 KB of the trainer's stderr (stdout when stderr is empty).
STDERR_TAIL_ATTR = "kubetune:stderr_tail"
#: Trial user attr marking trials this runner launched (to clean up after a hard kill).
RUNNER_ATTR = "kubetune:runner"
#: Study user attrs.
START_TIME_ATTR = "kubetune:start_time"
WARM_START_ATTR = "kubetune:warm_start_enqueued"
#: Fail reason for trials stopped by Ctrl-C / SIGTERM (local mode only).
INTERRUPTED = "Interrupted"
LOCAL_NAMESPACE = "local"
#: Seconds between SIGTERM and SIGKILL, as a pod's terminationGracePeriodSeconds would.
GRACE_SECONDS = 3.0
_STORAGE_ERRORS: tuple[type[Exception], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.SQLAlchemyError,
)
_OPEN_ERRORS: tuple[type[Exception], ...] = (*_STORAGE_ERRORS, ImportError, ValueError, OSError)


class LocalRunError(RuntimeError):
    """The run cannot start or go on (bad storage URL, unusable template); one-line message."""


@dataclass(frozen=True)
class TrialRow:
    """One finished trial as the final table shows it."""

    number: int
    values: list[float]
    params: dict[str, Any]
    seconds: float | None


@dataclass(frozen=True)
class LocalResult:
    """What ``run_local`` did.

    ``exit_code``: 0 when the budget was used up (or the deadline reached), 1 when the study
    stopped on ``maxFailedTrials`` or no trial completed, 130 when interrupted.
    ``best``: the best trials (the Pareto front for several objectives), best first.
    """

    study_name: str
    storage: str
    exit_code: int
    reason: str
    complete: int
    pruned: int
    failed: int
    best: list[TrialRow]
    log_dir: str


def default_storage(study_name: str) -> str:
    """``sqlite:///kubetune-<name>.db`` in the working directory."""
    return f"sqlite:///kubetune-{study_name}.db"


def _redact(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", maxsplit=1)[-1] if "@" in url else url


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class _Running:
    trial: optuna.trial.Trial
    proc: subprocess.Popen[bytes]
    started: float
    stdout: Path
    stderr: Path
    termination_log: Path | None
    kill_reason: str | None = None
    term_sent: float | None = None
    files: list[IO[bytes]] = field(default_factory=list)
    #: Unix time of the last sign of life known: the start, then the newest heartbeat read.
    last_seen: float = 0.0


def _open_study(ts: TuningStudy, storage: str) -> optuna.Study:
    spec = ts.spec
    missing = sampler_unavailable(spec)
    if missing is not None:
        raise LocalRunError(missing)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=ts.metadata.name,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
            directions=directions(spec),
            load_if_exists=True,
        )
    except _OPEN_ERRORS as exc:
        raise LocalRunError(f"cannot open storage {_redact(storage)}: {_one_line(exc)}") from None
    if study.directions != directions(spec):
        found = [d.name.lower() for d in study.directions]
        raise LocalRunError(
            f"study {ts.metadata.name!r} in {_redact(storage)} has directions {found}, but the "
            "manifest's objectives differ; use another study name or storage"
        )
    return study


def _count(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    by = {s: 0 for s in TrialState}
    for t in trials:
        by[t.state] += 1
    return Counts(
        complete=by[TrialState.COMPLETE],
        pruned=by[TrialState.PRUNED],
        failed=by[TrialState.FAIL],
        running=by[TrialState.RUNNING],
    )


def _fail_trial(study: optuna.Study, trial_id: int, number: int, reason: str, stderr: str) -> bool:
    """Fail a RUNNING trial with its reason and output tail; False if it already finished."""
    storage = study._storage
    try:
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        if stderr:
            storage.set_trial_user_attr(trial_id, STDERR_TAIL_ATTR, stderr)
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True


def _best_rows(study: optuna.Study, limit: int = 5) -> list[TrialRow]:
    if len(study.directions) > 1:
        chosen = study.best_trials[: limit * 2]
    else:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        chosen = sorted(done, key=lambda t: sign * float(t.values[0]))[:limit]
    return [
        TrialRow(
            number=t.number,
            values=[float(v) for v in t.values or []],
            params=dict(t.params),
            seconds=t.duration.total_seconds() if t.duration is not None else None,
        )
        for t in chosen
    ]


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _StopRequest:
    """Set by SIGINT/SIGTERM; the loop reads it between steps.

    The handler only records the signal: raising ``KeyboardInterrupt`` from it could land
    inside a storage call (a SQLite read half-done leaves the database locked for the clean-up
    that follows). A plain attribute, not a ``threading.Event``: ``Event.set`` takes a lock
    that the interrupted main thread might hold.
    """

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """SIGINT and SIGTERM ask the loop to stop (main thread only); the old handlers return.

    A signal ignored when we start (``nohup``, a background job) stays ignored.
    """
    stop = _StopRequest()
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old != signal.SIG_IGN:
                signal.signal(sig, stop)
                previous[sig] = old
    except ValueError:  # not the main thread: nothing was installed
        pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Runner:
    """The loop: launch into free slots, watch processes, turn exits into trial states."""

    def __init__(
        self,
        ts: TuningStudy,
        study: optuna.Study,
        budget: Budget,
        *,
        console: Console,
        log_dir: Path,
        base_env: Mapping[str, str],
        cwd: str | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        poll_interval: float,
    ) -> None:
        self.ts = ts
        self.spec = ts.spec
        self.study = study
        self.budget = budget
        self.console = console
        self.log_dir = log_dir
        self.base_env = base_env
        self.cwd = cwd
        self.clock = clock
        self.wall_clock = wall_clock
        self.poll_interval = poll_interval
        self.namespace = ts.metadata.namespace or LOCAL_NAMESPACE
        self.reporter = self.spec.trial.result.from_ == "Reporter"
        self.container = self.spec.trial.trainer_container()
        self.running: dict[int, _Running] = {}
        self.server: ReportServer | None = None
        self.signer = TokenSigner(generate_key())
        cpus = os.cpu_count() or 1
        self.threads = max(1, cpus // max(1, budget.parallelism))

    # -- setup -------------------------------------------------------------------------------

    def check_template(self) -> None:
        """Fail before any trial starts when the template cannot run locally."""
        try:
            trial_command(self.container, {}, sys.executable)
        except ValueError as exc:
            raise LocalRunError(str(exc)) from None
        _, warnings = trial_env(
            {},
            {},
            namespace=self.namespace,
            study=self.ts.metadata.name,
            number=0,
            container_env=self.container.get("env") or [],
        )
        for warning in warnings:
            self.console.print(f"[yellow]warning:[/yellow] {warning}")

    def prepare(self) -> None:
        """Warm start once, fail trials a hard-killed earlier run left RUNNING, serve the API."""
        study = self.study
        if START_TIME_ATTR not in study.user_attrs:
            study.set_user_attr(START_TIME_ATTR, self.wall_clock())
            with warnings.catch_warnings():  # set_metric_names is experimental in Optuna
                warnings.simplefilter("ignore")
                study.set_metric_names([o.name for o in self.spec.objectives])
        if self.spec.enqueue_trials and not study.user_attrs.get(WARM_START_ATTR):
            for params in self.spec.enqueue_trials:
                study.enqueue_trial(dict(params), skip_if_exists=True)
            study.set_user_attr(WARM_START_ATTR, True)
        resumed = False
        for t in study.get_trials(deepcopy=False):
            resumed = True
            if t.state == TrialState.RUNNING and t.user_attrs.get(RUNNER_ATTR) == "local":
                _fail_trial(
                    study,
                    t._trial_id,
                    t.number,
                    f"{INTERRUPTED}: left running by an earlier local run that did not exit",
                    "",
                )
        if resumed:
            # A seeded sampler would otherwise replay the first run's random proposals.
            study.sampler.reseed_rng()
        if self.reporter:
            name = self.ts.metadata.name
            target = self.study

            def resolve(namespace: str, study_name: str) -> optuna.Study | None:
                return target if (namespace, study_name) == (self.namespace, name) else None

            self.server = ReportServer(resolve, self.signer)
            self.server.start()

    def elapsed(self) -> float:
        start = self.study.user_attrs.get(START_TIME_ATTR)
        return self.wall_clock() - float(start) if isinstance(start, int | float) else 0.0

    # -- trials ------------------------------------------------------------------------------

    def launch(self) -> None:
        trial = self.study.ask()
        number = trial.number
        trial.set_user_attr(RUNNER_ATTR, "local")
        stdout = self.log_dir / f"trial-{number}.out"
        stderr = self.log_dir / f"trial-{number}.err"
        try:
            params = suggest_params(trial, self.spec)
        except Exception as exc:  # a sampler/space mismatch must not end the study
            _fail_trial(self.study, trial._trial_id, number, f"{reasons.JOB_FAILED}: {exc}", "")
            return
        termination_log: Path | None = None
        if not self.reporter:
            termination_log = self.log_dir / f"trial-{number}.termination-log"
            termination_log.write_text("")
        report_url = self.server.base_url if self.server is not None else None
        token = (
            self.signer.issue(self.namespace, self.ts.metadata.name, number, 0)
            if self.server is not None
            else None
        )
        env, _ = trial_env(
            self.base_env,
            params,
            namespace=self.namespace,
            study=self.ts.metadata.name,
            number=number,
            report_url=report_url,
            token=token,
            termination_log=str(termination_log) if termination_log else None,
            container_env=self.container.get("env") or [],
            threads=self.threads,
        )
        argv = trial_command(self.container, env, sys.executable)
        out = stdout.open("wb")
        err = stderr.open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            out.close()
            err.close()
            _fail_trial(
                self.study,
                trial._trial_id,
                number,
                f"{reasons.EXIT_CODE}: cannot start {argv[0]!r}: {exc.strerror or exc}",
                "",
            )
            return
        self.running[number] = _Running(
            trial,
            proc,
            self.clock(),
            stdout,
            stderr,
            termination_log,
            files=[out, err],
            last_seen=self.wall_clock(),
        )

    def watch(self) -> bool:
        """Enforce deadlines, collect exits; True when a trial finished."""
        changed = False
        now = self.clock()
        deadline = self.spec.trial.active_deadline_seconds
        for number, run in list(self.running.items()):
            if deadline is not None and run.kill_reason is None and now - run.started > deadline:
                run.kill_reason = (
                    f"{reasons.DEADLINE_EXCEEDED}: ran longer than activeDeadlineSeconds={deadline}"
                )
                run.term_sent = now
                _kill_group(run.proc, signal.SIGTERM)
            elif run.kill_reason is None and (silence := self._silence(run)) is not None:
                run.kill_reason = silence
                run.term_sent = now
                _kill_group(run.proc, signal.SIGTERM)
            elif run.term_sent is not None and now - run.term_sent > GRACE_SECONDS:
                _kill_group(run.proc, signal.SIGKILL)
            code = run.proc.poll()
            if code is None:
                continue
            del self.running[number]
            self.finish(run, code)
            changed = True
        return changed

    def _silence(self, run: _Running) -> str | None:
        """The fail reason of a trainer silent past ``heartbeatTimeoutSeconds``, else None.

        The ledger is read only once the last known sign of life is that old, so a chatty
        trainer costs no reads here.
        """
        timeout = self.spec.trial.heartbeat_timeout_seconds
        if timeout is None or self.wall_clock() - run.last_seen < timeout:
            return None
        attrs = self.study._storage.get_trial(run.trial._trial_id).user_attrs
        beat = attrs.get(HEARTBEAT_ATTR)
        if isinstance(beat, int | float) and not isinstance(beat, bool):
            run.last_seen = max(run.last_seen, float(beat))
        silent = self.wall_clock() - run.last_seen
        if silent < timeout:
            return None
        return (
            f"{reasons.HEARTBEAT_TIMEOUT}: sent no report and no heartbeat for {silent:.0f} s "
            f"(heartbeatTimeoutSeconds={timeout})"
        )

    def finish(self, run: _Running, code: int) -> None:
        for f in run.files:
            f.close()
        trial_id, number = run.trial._trial_id, run.trial.number
        if run.term_sent is not None:
            _kill_group(run.proc, signal.SIGKILL)  # leftovers of the process group
        state = self.study._storage.get_trial(trial_id).state
        if state != TrialState.RUNNING:
            return  # the trainer reported its end through the API
        stderr = run.stderr.read_bytes()
        output = tail(stderr if stderr.strip() else run.stdout.read_bytes())
        if run.kill_reason is not None:
            reason = run.kill_reason
        elif code != 0:
            reason = f"{reasons.EXIT_CODE}: trainer exited with code {code}"
            if code < 0:
                with contextlib.suppress(ValueError):
                    reason = f"{reasons.EXIT_CODE}: trainer killed by {signal.Signals(-code).name}"
        elif run.termination_log is not None:
            text = run.termination_log.read_text(encoding="utf-8", errors="replace")
            try:
                values = parse_termination_message(text, len(self.study.directions))
            except ValueError as exc:
                reason = f"{reasons.NO_RESULT}: {exc}"
            else:
                try:
                    self.study.tell(number, values)
                    return
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                    reason = f"{reasons.NO_RESULT}: {exc}"
        else:
            reason = f"{reasons.NO_RESULT}: trainer exited 0 without completing the trial"
        _fail_trial(self.study, trial_id, number, reason, output)

    def stop_all(self, reason: str) -> None:
        """SIGTERM every running trial, SIGKILL after the grace period, fail them."""
        runs = list(self.running.values())
        for run in runs:
            _kill_group(run.proc, signal.SIGTERM)
        give_up = time.monotonic() + GRACE_SECONDS
        for run in runs:
            try:
                run.proc.wait(timeout=max(0.0, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(run.proc, signal.SIGKILL)
                run.proc.wait()
        for run in runs:
            run.kill_reason = reason
            self.finish(run, run.proc.returncode)
        self.running.clear()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _goal(study: optuna.Study, ts: TuningStudy) -> str | None:
    """``GoalReached: ...`` once a complete trial reached every objective's goal (the
    operator's rule, ``kubetune.reconcile.goal_reached``), else None."""
    objectives = ts.spec.objectives
    if all(o.goal is None for o in objectives):
        return None
    done = [
        TrialRecord(t.number, "COMPLETE", values=tuple(float(v) for v in t.values))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None
    ]
    met = goal_reached(done, {}, objectives)
    if met is None:
        return None
    return f"{reasons.GOAL_REACHED}: trial {met.trial} reached the goal: {', '.join(met.met)}"


def _halts(reason: str) -> bool:
    """Whether the stop ends the running trials too (the operator's ``Stop.halts``)."""
    return reason.startswith((reasons.MAX_FAILED_TRIALS_REACHED, reasons.DEADLINE_REACHED))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn(
            "finished · {task.fields[complete]} complete · {task.fields[pruned]} pruned · "
            "{task.fields[failed]} failed · best {task.fields[best]}"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _best_text(study: optuna.Study) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on front"
        return f"{study.best_value:.4g}"
    except ValueError:
        return "-"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _print_summary(console: Console, ts: TuningStudy, result: LocalResult) -> None:
    names = [o.name for o in ts.spec.objectives]
    title = "Pareto front" if len(names) > 1 else "Best trials"
    table = Table(title=title)
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("params")
    table.add_column("seconds", justify="right")
    for row in result.best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else ""
        table.add_row(str(row.number), *[_fmt(v) for v in row.values], params, seconds)
    if result.best:
        console.print(table)
    console.print(
        f"Trials: {result.complete} complete, {result.pruned} pruned, {result.failed} failed. "
        f"Stopped: {result.reason}"
    )
    console.print(f"Storage: {_redact(result.storage)} (study {result.study_name!r})")
    console.print(f"Trial logs: {result.log_dir}")
    if result.exit_code == 130:
        console.print("Interrupted. Run the same command again to resume.")


def _progress_fields(study: optuna.Study, counts: Counts) -> dict[str, Any]:
    return {
        "completed": counts.total - counts.running,
        "complete": counts.complete,
        "pruned": counts.pruned,
        "failed": counts.failed,
        "best": _best_text(study),
    }


def _loop(
    runner: _Runner, progress: Progress, stop: _StopRequest, *, exhausts: bool, wanted: int
) -> str:
    """Launch, watch and stop on the budget's rules until done; returns why it ended.

    Returns "" at once when ``stop`` is set: checked only between steps, so a signal never
    cuts a storage call short.
    """
    study, ts, budget = runner.study, runner.ts, runner.budget
    counts = _count(study)
    task = progress.add_task(
        ts.metadata.name, total=budget.max_trials, **_progress_fields(study, counts)
    )
    changed = True
    goal: str | None = None
    while stop.signal is None:
        if changed:
            goal = _goal(study, ts)
            counts = _count(study)
            progress.update(task, **_progress_fields(study, counts))
        if goal is not None:
            if runner.running:
                runner.stop_all(f"{reasons.STUDY_STOPPED}: the study stopped ({goal})")
            return goal
        decision = plan_launches(
            counts, budget, ours_running=len(runner.running), elapsed_seconds=runner.elapsed()
        )
        if decision.reason and runner.running and _halts(decision.reason):
            # As in the operator: failures and the deadline end the running trials too.
            runner.stop_all(f"{reasons.STUDY_STOPPED}: the study stopped ({decision.reason})")
            changed = True
            continue
        if decision.done:
            if exhausts and decision.reason.startswith(reasons.MAX_TRIALS_REACHED):
                return (
                    f"{reasons.SEARCH_SPACE_EXHAUSTED}: every point of the grid was "
                    f"tried ({budget.max_trials} trials; maxTrials={wanted})"
                )
            return decision.reason
        for _ in range(decision.launch):
            if stop.signal is not None:
                break
            runner.launch()
        changed = decision.launch > 0
        time.sleep(runner.poll_interval)  # a handled signal does not cut it short (PEP 475)
        changed = runner.watch() or changed
    return ""


def run_local(
    manifest_path: str | Path,
    *,
    storage: str | None = None,
    parallelism: int | None = None,
    max_trials: int | None = None,
    console: Console | None = None,
    log_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    poll_interval: float = 0.1,
) -> LocalResult:
    """Run (or resume) the manifest's study locally and return what happened.

    Raises ``kubetune.spec.SpecError`` for an invalid manifest and ``LocalRunError`` (one
    line, no secrets) when the storage cannot be opened or the template cannot run locally.
    Trial failures never raise: they become FAIL trials.
    """
    console = console or Console()
    ts = load_manifest(manifest_path)
    spec = ts.spec
    name = ts.metadata.name
    storage = normalise_storage_url(
        storage or default_storage(name),
        have_psycopg3=importlib.util.find_spec("psycopg") is not None,
    )
    if parallelism is not None and parallelism < 1:
        raise LocalRunError(f"--parallelism must be >= 1, got {parallelism}")
    if max_trials is not None and max_trials < 1:
        raise LocalRunError(f"--max-trials must be >= 1, got {max_trials}")
    # A Grid study ends once every point was tried, as in the operator (SearchSpaceExhausted).
    wanted = max_trials or spec.budget.max_trials
    grid = grid_trials(spec)
    exhausts = grid is not None and grid < wanted
    budget = Budget(
        max_trials=grid if grid is not None and exhausts else wanted,
        parallelism=parallelism or spec.budget.parallelism,
        max_failed_trials=spec.budget.max_failed_trials,
        deadline_seconds=spec.budget.deadline_seconds,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(ts, storage)
    if log_dir is not None:
        logs = Path(log_dir)
        logs.mkdir(parents=True, exist_ok=True)
    else:
        logs = Path(tempfile.mkdtemp(prefix=f"kubetune-{name}-"))
    runner = _Runner(
        ts,
        study,
        budget,
        console=console,
        log_dir=logs,
        base_env=dict(os.environ if env is None else env),
        cwd=cwd,
        clock=clock,
        wall_clock=wall_clock,
        poll_interval=poll_interval,
    )
    try:
        runner.check_template()
    except LocalRunError:
        if log_dir is None:
            shutil.rmtree(logs, ignore_errors=True)
        raise
    progress = _progress(console)
    try:
        with _stop_on_signals() as stop, progress:
            runner.prepare()
            reason = _loop(runner, progress, stop, exhausts=exhausts, wanted=wanted)
            exit_code = 0
            if stop.signal is not None:
                exit_code, reason = 130, f"{INTERRUPTED}: stopped by the user ({stop.signal})"
                runner.stop_all(f"{INTERRUPTED}: the local run was interrupted ({stop.signal})")
    except _STORAGE_ERRORS as exc:
        with contextlib.suppress(Exception):
            runner.stop_all(f"{reasons.STORAGE_ERROR}: the local run lost its storage")
        raise LocalRunError(f"storage {_redact(storage)} failed: {_one_line(exc)}") from None
    finally:
        runner.close()
    counts = _count(study)
    if exit_code == 0 and reason.startswith(reasons.MAX_FAILED_TRIALS_REACHED):
        exit_code = 1
    elif exit_code == 0 and counts.complete == 0:
        exit_code = 1
        reason = f"{reason}; no trial completed" if reason else "no trial completed"
    result = LocalResult(
        study_name=name,
        storage=storage,
        exit_code=exit_code,
        reason=reason,
        complete=counts.complete,
        pruned=counts.pruned,
        failed=counts.failed,
        best=_best_rows(study),
        log_dir=str(logs),
    )
    _print_summary(console, ts, result)
    return result
