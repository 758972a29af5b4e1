"""Tests that wait on state, never on the clock.

Two halves, one file, standard library only (trainer stubs import it too, in their own process):

* the **stub side**: :func:`hold` blocks a trainer process at a point of the test's choosing,
  after announcing that it got there (``holding-<name>``, holding its pid), until the test
  creates ``release-<name>`` or ``release-all``. A precondition such as "two trials are running
  when Ctrl-C arrives" is then true by construction, however slow the machine is. A held
  process whose parent went away (the runner was SIGKILLed, a test failed half-way) exits by
  itself, so a failing test leaves no process behind.
* the **test side**: :class:`Holds` waits for processes to reach their hold and releases them;
  :func:`wait_until` polls any condition with a generous deadline and fails with a message that
  names what it waited for and for how long; :func:`finish` waits for a subprocess to exit and,
  past the deadline, kills it and fails with its output. A Python subprocess started with
  :func:`start_python` shows every thread's stack in that output, so a hang explains itself.

The rule (docs/testing.md): wait on state, never sleep to prove that something did not happen,
and size every deadline for a loaded machine (it only matters when the test is failing anyway).

A stub process finds this module with ``sys.path.insert(0, SUPPORT_PARENT)`` (see
:data:`SUPPORT_PARENT`) and ``from support.hold import hold``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "SUPPORT_PARENT",
    "WAIT_SECONDS",
    "Holds",
    "finish",
    "hold",
    "start_python",
    "wait_until",
]

#: The folder to put on a stub's ``sys.path`` so that ``import support.hold`` works there.
SUPPORT_PARENT = str(Path(__file__).resolve().parents[1])
#: How long a test waits for a state before it fails. Generous on purpose: a passing test never
#: waits this long, and a loaded CI machine can be ten times slower than an idle laptop.
WAIT_SECONDS = 300.0
_POLL = 0.05


# -- stub side ---------------------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the whole file or none of it (never an empty pid file)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def hold(
    folder: str | os.PathLike[str], name: str, *, give_up_after: float = 2 * WAIT_SECONDS
) -> None:
    """Announce ``holding-<name>`` in ``folder``, then block until the test releases us.

    Released by ``release-<name>`` or ``release-all`` in ``folder``. Exits the process when
    its parent changes (code 70: nobody is left to release or reap it) or after
    ``give_up_after`` seconds (code 71: the test is failing, let it fail instead of hang).
    """
    where = Path(folder)
    parent = os.getppid()
    _write_atomically(where / f"holding-{name}", str(os.getpid()))
    give_up = time.monotonic() + give_up_after
    while not ((where / f"release-{name}").exists() or (where / "release-all").exists()):
        if os.getppid() != parent:
            sys.stderr.write(f"hold {name}: the process that started me is gone; exiting\n")
            sys.exit(70)
        if time.monotonic() > give_up:
            sys.stderr.write(f"hold {name}: not released within {give_up_after:.0f} s\n")
            sys.exit(71)
        time.sleep(_POLL)


# -- test side ---------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], object],
    what: str,
    *,
    timeout: float = WAIT_SECONDS,
    details: Callable[[], str] | None = None,
    give_up_early: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``check()`` until it is truthy; past ``timeout`` fail naming ``what``.

    ``give_up_early()`` returns a reason to stop waiting at once (say, the process that should
    make ``check`` true has exited), or None. ``details()`` adds context to the failure.
    """
    start = time.monotonic()
    while not check():
        reason = give_up_early() if give_up_early is not None else None
        waited = time.monotonic() - start
        if reason is None and waited > timeout:
            reason = f"still not true after {waited:.0f} s (deadline {timeout:.0f} s)"
        if reason is not None:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"gave up waiting for {what}: {reason}{extra}")
        time.sleep(_POLL)


def start_python(
    args: Sequence[str], env: dict[str, str], **popen: object
) -> subprocess.Popen[bytes]:
    """``sys.executable *args``, ready to be interrupted and to explain a hang.

    * SIGINT starts at its default action in the child, so Python turns it into
      ``KeyboardInterrupt`` even when this test run ignores SIGINT (a background job of a
      non-interactive shell, ``cmd &`` in CI scripts, ignores it, and an ignored signal stays
      ignored across ``exec``): without this, a test that plays Ctrl-C waits forever.
    * faulthandler is on: :func:`finish` can ask a hung process for the stack of every thread
      (SIGABRT; core dumps are off for it).
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:  # a handled signal is reset to its default in the child by exec
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, *args], env={**env, "PYTHONFAULTHANDLER": "1"}, **popen
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):  # it may be gone already
        resource.prlimit(proc.pid, resource.RLIMIT_CORE, (0, 0))
    return proc


def finish(
    proc: subprocess.Popen[bytes], what: str, *, timeout: float = WAIT_SECONDS
) -> tuple[int, str]:
    """Wait for ``proc`` to exit; return (exit code, its stdout and stderr as text).

    Past ``timeout`` the test fails with the process's output, so a hang is a clear failure
    instead of a ``TimeoutExpired`` and a leftover process. The process first gets SIGABRT
    (from :func:`start_python`, it prints every thread's stack), then SIGKILL.
    """
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        waited = time.monotonic() - start
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        text = _text(out) + _text(err)
        raise AssertionError(
            f"{what} did not exit within {waited:.0f} s (deadline {timeout:.0f} s); "
            f"stopped it with SIGABRT. Its output:\n{text}"
        ) from None
    return proc.returncode, _text(out) + _text(err)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


class Holds:
    """The test's view of a folder where stub processes :func:`hold`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def holding(self) -> dict[str, int]:
        """Name -> pid of every process that reached its hold (released or not)."""
        found = {}
        for path in self.folder.glob("holding-*"):
            found[path.name.removeprefix("holding-")] = int(path.read_text())
        return found

    def wait_holding(
        self,
        names: Sequence[str],
        *,
        proc: subprocess.Popen[bytes] | None = None,
        timeout: float = WAIT_SECONDS,
    ) -> dict[str, int]:
        """Wait until every one of ``names`` holds; returns their pids.

        With ``proc`` (the runner that starts them), its early exit fails the wait at once,
        and a failure kills it and shows its output.
        """

        def early() -> str | None:
            if proc is not None and proc.poll() is not None:
                return f"the runner exited with code {proc.returncode} first"
            return None

        try:
            wait_until(
                lambda: set(names) <= set(self.holding()),
                f"{sorted(names)} to reach their hold in {self.folder}",
                timeout=timeout,
                details=lambda: f"holding so far: {sorted(self.holding())}",
                give_up_early=early,
            )
        except AssertionError as failure:
            if proc is None:
                raise
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"{failure}\nThe runner's output:\n{_text(out)}{_text(err)}"
            ) from None
        return {name: pid for name, pid in self.holding().items() if name in names}

    def release(self, name: str) -> None:
        (self.folder / f"release-{name}").write_text("")

    def release_all(self) -> None:
        """Release every process holding now or later."""
        (self.folder / "release-all").write_text("")
