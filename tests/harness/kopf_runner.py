"""Run a kopf operator against the emulated API: in a thread (KopfRunner) or as a process.

In a thread is fastest (~1 s to start); a process is what fault tests need to kill the
operator abruptly (SIGKILL) and start a new one, as a crashed pod would be restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kopf._core.intents.registries import SmartOperatorRegistry  # has the login handlers
from kopf.testing import KopfRunner

__all__ = ["OperatorProcess", "kopf_args", "run_kopf"]


def kopf_args(
    target: str | Path, namespace: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """``kopf run`` arguments; ``target`` is a file path or ``module:<dotted.name>``."""
    args = ["run", "--standalone", "--verbose"]
    args += ["--namespace", namespace] if namespace else ["-A"]
    args += list(extra)
    if isinstance(target, str) and target.startswith("module:"):
        args += ["-m", target.removeprefix("module:")]
    else:
        args.append(str(target))
    return args


@contextlib.contextmanager
def run_kopf(
    target: str | Path,
    namespace: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = 300.0,
    settings: Any = None,
) -> Iterator[KopfRunner]:
    """Run kopf in a thread with a fresh handler registry; re-raises its errors on exit.

    A ``module:`` target is dropped from ``sys.modules`` first, because kopf imports it and a
    cached module would not register its handlers into the fresh registry again.
    """
    if isinstance(target, str) and target.startswith("module:"):
        sys.modules.pop(target.removeprefix("module:"), None)
    runner = KopfRunner(
        kopf_args(target, namespace, extra),
        timeout=timeout,
        registry=SmartOperatorRegistry(),
        settings=settings,
    )
    with runner:
        yield runner


class OperatorProcess:
    """``python -m kopf run ...`` as a child process, for kill-and-restart fault tests."""

    def __init__(
        self,
        target: str | Path,
        kubeconfig: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        namespace: str | None = None,
        extra: Sequence[str] = (),
        log: str | Path | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "kopf", *kopf_args(target, namespace, extra)]
        self.env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig)}
        self.log = Path(log) if log else Path(kubeconfig).with_suffix(".operator.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer removal, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(60)

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM and wait (kopf shuts down gracefully); SIGKILL if it does not."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
