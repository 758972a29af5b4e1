"""``kubetune run``: the same TuningStudy manifest, trials as local processes, no cluster.

The runner is a second shell around the operator's core: each pass it observes its trial
processes (``kubetune.local_trials``, which plays kubelet and Job controller: each attempt is a
"Job" named as in a cluster) and the ledger, asks ``kubetune.reconcile.decide`` what to do,
and applies the actions through the same ``kubetune.ledger.Ledger``. A trial therefore ends
locally exactly as it would in a cluster: the same termination-message parser, retries, stop
rules (``maxTrials``, ``maxFailedTrials``, ``deadlineSeconds``, ``maxGpuSeconds``, a Grid's
end, ``objectives[].goal``), heartbeat timeout, fail reasons (``kubetune:fail_reason`` a code
such as ``ExitCode``, ``kubetune:fail_message`` the detail with the log tail) and warm-start
marker. Trial failures never raise: they become FAIL trials, and the study goes on.

Optuna storage (SQLite by default, PostgreSQL works too) is the ledger, so a second run of the
same command resumes: trials already in the study count against ``maxTrials``, and a trial a
hard-killed earlier run left RUNNING is retried like a trial whose Job disappeared. In Reporter
mode the runner serves the report API on 127.0.0.1 (``kubetune.reporting``); in
TerminationMessage mode the trainer writes ``{"values": [...]}`` to the file named by
``KUBETUNE_TERMINATION_LOG``.

Local-mode specifics (the shell's, not the rules'): Ctrl-C (or SIGTERM) stops the running
trials, fails them with reason ``Interrupted`` and returns exit code 130 with the storage
intact. The namespace is ``local`` unless the manifest names one; the Optuna study is named
after ``metadata.name``; ``deadlineSeconds`` counts from the study's first local start (study
user attr ``kubetune:start_time``); each trial gets ``OMP_NUM_THREADS = cpus // parallelism``
unless the caller's environment sets it; trial stdout/stderr go to ``trial-<n>.out``/``.err``
(``trial-<n>-r<attempt>.*`` for retries) in a log folder (a temp folder unless ``log_dir``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from rich.console import Console
from rich.progress import Progress

from kubetune._local_plan import normalise_storage_url, trial_command, trial_env
from kubetune.ledger import OPEN_ERRORS, STORAGE_ERRORS, Ledger
from kubetune.local_study import (
    INTERRUPTED,
    LOCAL_NAMESPACE,
    LocalStudy,
)
from kubetune.local_summary import (
    LocalResult,
    TrialRow,
    best_rows,
    print_summary,
    progress_bar,
    progress_fields,
    redact,
)
from kubetune.local_trials import TrialProcesses
from kubetune.reconcile import (
    Decision,
    spec_changed,
)
from kubetune.sampling import directions, sampler_unavailable
from kubetune.spec import load_manifest
from kubetune.status import trial_counts

if TYPE_CHECKING:
    from kubetune.spec import TuningStudy, TuningStudySpec

__all__ = [
    "INTERRUPTED",
    "LocalResult",
    "LocalRunError",
    "TrialRow",
    "default_storage",
    "run_local",
]

#: Seconds between passes while no process ended (heartbeat timeouts, the study deadline).
RESYNC_SECONDS = 1.0
_DONE = ("Succeeded", "Failed", "Invalid")


class LocalRunError(RuntimeError):
    """The run cannot start or go on (bad storage URL, unusable template); one-line message."""


def default_storage(study_name: str) -> str:
    """``sqlite:///kubetune-<name>.db`` in the working directory."""
    return f"sqlite:///kubetune-{study_name}.db"


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _with_overrides(
    spec: TuningStudySpec, parallelism: int | None, max_trials: int | None
) -> TuningStudySpec:
    """The spec with the command line's ``--parallelism`` / ``--max-trials`` applied."""
    for flag, value in (("--parallelism", parallelism), ("--max-trials", max_trials)):
        if value is not None and value < 1:
            raise LocalRunError(f"{flag} must be >= 1, got {value}")
    changes = {"parallelism": parallelism, "max_trials": max_trials}
    budget = spec.budget.model_copy(update={k: v for k, v in changes.items() if v is not None})
    return spec.model_copy(update={"budget": budget})


def _open(ts: TuningStudy, spec: TuningStudySpec, storage: str) -> tuple[Ledger, optuna.Study]:
    """The ledger and the study (created, or resumed when it matches the manifest)."""
    missing = sampler_unavailable(spec)
    if missing is not None:
        raise LocalRunError(missing)
    name = ts.metadata.name
    try:
        ledger = Ledger(storage)
        study = ledger.open(
            spec,
            namespace=ts.metadata.namespace or LOCAL_NAMESPACE,
            name=name,
            uid="local",
            study_name=name,
        )
        changed = spec_changed(spec, ledger.snapshot(study))
    except OPEN_ERRORS as exc:
        raise LocalRunError(f"cannot open storage {redact(storage)}: {_one_line(exc)}") from None
    if changed or study.directions != directions(spec):
        raise LocalRunError(
            f"study {name!r} in {redact(storage)} was created from other objectives, search "
            "space or sampler than the manifest's; use another study name or storage"
        )
    return ledger, study


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


def _check_template(ts: TuningStudy, console: Console) -> None:
    """Fail before anything is stored or started when the template cannot run locally."""
    container = ts.spec.trial.trainer_container()
    try:
        trial_command(container, {}, sys.executable)
    except ValueError as exc:
        raise LocalRunError(str(exc)) from None
    _, problems = trial_env(
        {},
        {},
        namespace=ts.metadata.namespace or LOCAL_NAMESPACE,
        study=ts.metadata.name,
        number=0,
        container_env=container.get("env") or [],
    )
    for problem in problems:
        console.print(f"[yellow]warning:[/yellow] {problem}")


def _loop(
    local: LocalStudy, progress: Progress, stop: _StopRequest, poll_interval: float
) -> Decision | None:
    """Pass after pass until the study is done (None when a signal stopped it first).

    Between passes only the processes are polled: a pass comes as soon as one ends, right
    after a pass that acted, and otherwise every ``RESYNC_SECONDS`` (or sooner when the
    decision asks). ``stop`` is read between steps, so a signal never cuts a storage call.
    """
    task = progress.add_task(local.name, total=None, **progress_fields({}))
    while stop.signal is None:
        decision = local.reconcile()
        progress.update(task, total=_cap(decision), **progress_fields(decision.status))
        if decision.state in _DONE and local.procs.running() == 0:
            return decision
        wait = 0.0 if decision.actions else min(RESYNC_SECONDS, decision.requeue_after or 1e9)
        give_up = time.monotonic() + wait
        while stop.signal is None:
            time.sleep(poll_interval)  # a handled signal does not cut it short (PEP 475)
            if local.procs.poll() or time.monotonic() >= give_up:
                break
    return None


def _cap(decision: Decision) -> int | None:
    progress = str(decision.status.get("progress") or "")
    _, sep, total = progress.partition("/")
    return int(total) if sep and total.isdigit() else None


def _log_folder(name: str, log_dir: str | Path | None) -> Path:
    if log_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"kubetune-{name}-"))
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _result(
    local: LocalStudy, storage: str, reason: str, exit_code: int, logs: Path
) -> LocalResult:
    counts = trial_counts(local.ledger.snapshot(local.study).trials)
    return LocalResult(
        study_name=local.name,
        storage=storage,
        exit_code=exit_code,
        reason=reason,
        complete=int(counts.get("completed", 0)),
        pruned=int(counts.get("pruned", 0)),
        failed=int(counts.get("failed", 0)),
        best=best_rows(local.study),
        log_dir=str(logs),
    )


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
    ``clock`` (monotonic) times ``activeDeadlineSeconds``; ``wall_clock`` is the decision's
    ``now`` (heartbeats, the study deadline).
    """
    console = console or Console()
    ts = load_manifest(manifest_path)
    spec = _with_overrides(ts.spec, parallelism, max_trials)
    storage = normalise_storage_url(
        storage or default_storage(ts.metadata.name),
        have_psycopg3=importlib.util.find_spec("psycopg") is not None,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_template(ts, console)
    ledger, study = _open(ts, spec, storage)
    logs = _log_folder(ts.metadata.name, log_dir)
    procs = TrialProcesses(
        active_deadline_seconds=spec.trial.active_deadline_seconds,
        cwd=cwd,
        clock=clock,
        wall_clock=wall_clock,
    )
    local = LocalStudy(
        ts,
        spec,
        ledger,
        study,
        console=console,
        log_dir=logs,
        base_env=dict(os.environ if env is None else env),
        procs=procs,
        wall_clock=wall_clock,
    )
    result = _run(local, storage, logs, console, poll_interval)
    print_summary(console, [o.name for o in spec.objectives], result)
    return result


def _run(
    local: LocalStudy, storage: str, logs: Path, console: Console, poll_interval: float
) -> LocalResult:
    """The loop under signal handlers; what ended it becomes the result."""
    try:
        with _stop_on_signals() as stop, progress_bar(console) as progress:
            local.prepare()
            decision = _loop(local, progress, stop, poll_interval)
            if decision is None:
                local.interrupt(f"the local run was interrupted ({stop.signal})")
                reason = f"{INTERRUPTED}: stopped by the user ({stop.signal})"
                return _result(local, storage, reason, 130, logs)
    except STORAGE_ERRORS as exc:
        local.interrupt("the local run lost its storage")
        raise LocalRunError(f"storage {redact(storage)} failed: {_one_line(exc)}") from None
    finally:
        local.close()
    code = 1 if decision.state != "Succeeded" else 0
    return _result(local, storage, local.outcome(), code, logs)
