"""What ``kubetune run`` shows: the progress line while it runs, the best trials when it ends."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = [
    "LocalResult",
    "TrialRow",
    "best_rows",
    "print_summary",
    "progress_bar",
    "progress_fields",
    "redact",
]


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

    ``exit_code``: 0 when the study succeeded (budget used up, goal reached, deadline), 1 when
    it failed (``maxFailedTrials``, or no trial completed), 130 when interrupted.
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


def redact(url: str) -> str:
    """The storage URL without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", maxsplit=1)[-1] if "@" in url else url


def best_rows(study: optuna.Study, limit: int = 5) -> list[TrialRow]:
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


def progress_bar(console: Console) -> Progress:
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


def progress_fields(status: dict[str, Any]) -> dict[str, Any]:
    """The progress line's fields, from the same status the operator writes."""
    counts = status.get("trials") or {}
    return {
        "completed": sum(counts.get(k, 0) for k in ("completed", "pruned", "failed")),
        "complete": counts.get("completed", 0),
        "pruned": counts.get("pruned", 0),
        "failed": counts.get("failed", 0),
        "best": status.get("bestValue") or "-",
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def print_summary(console: Console, objectives: list[str], result: LocalResult) -> None:
    title = "Pareto front" if len(objectives) > 1 else "Best trials"
    table = Table(title=title)
    table.add_column("trial", justify="right")
    for name in objectives:
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
    console.print(f"Storage: {redact(result.storage)} (study {result.study_name!r})")
    console.print(f"Trial logs: {result.log_dir}")
    if result.exit_code == 130:
        console.print("Interrupted. Run the same command again to resume.")
