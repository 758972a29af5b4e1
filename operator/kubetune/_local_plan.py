"""Pure parts of the local runner: ``$(VAR)`` expansion, a trial's command and environment,
the end of its output. No I/O, no clock. (What to launch and how a trial ended are the
operator's rules, ``kubetune.reconcile``, which ``kubetune run`` calls too.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.ledger import normalise_storage_url
from kubetune.search_space import param_env

__all__ = [
    "PYTHON_NAMES",
    "expand_vars",
    "normalise_storage_url",
    "tail",
    "trial_command",
    "trial_env",
]

#: First words of a command that mean "the Python interpreter" and run in the current venv.
PYTHON_NAMES = frozenset(
    {
        "python",
        "python3",
        "/usr/bin/python",
        "/usr/bin/python3",
        "/usr/local/bin/python",
        "/usr/local/bin/python3",
    }
)


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` the way Kubernetes does in command, args and env values.

    ``$$`` is an escaped ``$``; a name that is not defined, or a ``$(`` with no closing
    parenthesis, is left as it is.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def trial_env(
    base: Mapping[str, str],
    params: Mapping[str, Any],
    *,
    namespace: str,
    study: str,
    number: int,
    attempt: int = 0,
    report_url: str | None = None,
    token: str | None = None,
    termination_log: str | None = None,
    container_env: Sequence[Mapping[str, Any]] = (),
    threads: int | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The environment a trial process gets, and warnings for what local mode cannot do.

    Same variables as the operator injects (docs/architecture.md), then the container's
    ``env`` entries with ``$(VAR)`` expanded against what is defined before them.
    ``threads`` sets ``OMP_NUM_THREADS`` unless the caller's environment already does, so
    parallel trials do not oversubscribe the CPU.
    """
    env = dict(base)
    warnings: list[str] = []
    if threads is not None and "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(param_env(dict(params)))
    env.update(
        KUBETUNE_NAMESPACE=namespace,
        KUBETUNE_STUDY=study,
        KUBETUNE_TRIAL_NUMBER=str(number),
        KUBETUNE_TRIAL_ATTEMPT=str(attempt),
    )
    for key in ("KUBETUNE_REPORT_URL", "KUBETUNE_TRIAL_TOKEN", "KUBETUNE_TERMINATION_LOG"):
        env.pop(key, None)
    if report_url is not None and token is not None:
        env["KUBETUNE_REPORT_URL"] = report_url
        env["KUBETUNE_TRIAL_TOKEN"] = token
    if termination_log is not None:
        env["KUBETUNE_TERMINATION_LOG"] = termination_log
    for i, entry in enumerate(container_env):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            warnings.append(f"env[{i}] has no name; skipped")
            continue
        if "value" in entry:
            env[name] = expand_vars(str(entry["value"]), env)
        elif "valueFrom" in entry:
            warnings.append(f"env {name}: valueFrom cannot be resolved locally; left unset")
        else:
            env[name] = ""
    return env, warnings


def trial_command(container: Mapping[str, Any], env: Mapping[str, str], python: str) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; ``python``/``python3`` -> ``python``.

    Raises ValueError when the container has no ``command`` (local mode cannot run the
    image's entrypoint).
    """
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        raise ValueError(
            f"container {container.get('name')!r} has no command; local mode runs the "
            "template's command + args as a process and cannot use the image's entrypoint"
        )
    argv = [expand_vars(part, env) for part in command + args]
    first = argv[0]
    if first in PYTHON_NAMES or os.path.basename(first) in {"python", "python3"}:
        argv[0] = python
    return argv


def tail(data: bytes, limit: int = 2048) -> str:
    """The last ``limit`` bytes as text (undecodable bytes replaced)."""
    return data[-limit:].decode("utf-8", "replace")
