"""``kubetune report``: one self-contained HTML file with Optuna's plotly charts of a study.

plotly.js is embedded inline, so the file opens offline (and can be attached to a ticket).
A chart that cannot be drawn yet (too few trials for importances, no intermediate values)
is replaced by a one-line note rather than failing the report.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kubetune.ledger import FAIL_REASON_ATTR

__all__ = ["ReportError", "render_report", "write_report"]


class ReportError(RuntimeError):
    """The study cannot be read (bad storage URL, unknown study name); one-line message."""


def _metric_names(study: optuna.Study) -> list[str]:
    names = getattr(study, "metric_names", None)
    if names and len(names) == len(study.directions):
        return [str(n) for n in names]
    if len(study.directions) == 1:
        return ["value"]
    return [f"objective {i}" for i in range(len(study.directions))]


def _per_objective(
    study: optuna.Study, index: int, name: str
) -> list[tuple[str, Callable[[], Any]]]:
    """History, importances and parallel coordinates of one objective of several."""
    vis = optuna.visualization

    def target(t: optuna.trial.FrozenTrial) -> float:
        return float(t.values[index])

    # Optuna's importance evaluator looks for what makes the target low.
    sign = -1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def importance_target(t: optuna.trial.FrozenTrial) -> float:
        return sign * float(t.values[index])

    return [
        (
            f"Optimization history: {name}",
            partial(vis.plot_optimization_history, study, target=target, target_name=name),
        ),
        (
            f"Parameter importances: {name}",
            partial(vis.plot_param_importances, study, target=importance_target, target_name=name),
        ),
        (
            f"Parallel coordinates: {name}",
            partial(vis.plot_parallel_coordinate, study, target=target, target_name=name),
        ),
    ]


def _charts(study: optuna.Study) -> list[tuple[str, Callable[[], Any]]]:
    """(title, figure factory) pairs; factories may raise when a chart does not apply."""
    vis = optuna.visualization
    names = _metric_names(study)
    charts: list[tuple[str, Callable[[], Any]]] = []
    if len(names) == 1:
        charts += [
            (
                "Optimization history",
                lambda: vis.plot_optimization_history(study, target_name=names[0]),
            ),
            ("Parameter importances", lambda: vis.plot_param_importances(study)),
            (
                "Parallel coordinates",
                lambda: vis.plot_parallel_coordinate(study, target_name=names[0]),
            ),
            ("Intermediate values", lambda: vis.plot_intermediate_values(study)),
        ]
    else:
        charts.append(("Pareto front", lambda: vis.plot_pareto_front(study, target_names=names)))
        for i, name in enumerate(names):
            charts += _per_objective(study, i, name)
    charts.append(("Timeline", lambda: vis.plot_timeline(study)))
    return charts


def _summary(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    names = _metric_names(study)
    cells = " · ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
    rows = []
    best = (
        study.best_trials if len(names) > 1 else ([study.best_trial] if counts["COMPLETE"] else [])
    )
    for t in best[:20]:
        values = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, t.values or [], strict=False))
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        rows.append(
            f"<tr><td>{t.number}</td><td>{html.escape(values)}</td>"
            f"<td>{html.escape(params)}</td></tr>"
        )
    failed = [t for t in trials if t.state == TrialState.FAIL][:20]
    fail_rows = [
        f"<tr><td>{t.number}</td><td>{html.escape(str(reason))}</td></tr>"
        for t in failed
        for reason in [t.user_attrs.get(FAIL_REASON_ATTR, "")]
    ]
    parts = [f"<p>Trials: {html.escape(cells or 'none')}</p>"]
    if rows:
        title = "Pareto front" if len(names) > 1 else "Best trial"
        parts.append(
            f"<h2>{title}</h2><table><tr><th>trial</th><th>values</th>"
            f"<th>params</th></tr>{''.join(rows)}</table>"
        )
    if fail_rows:
        parts.append(
            "<h2>Failed trials</h2><table><tr><th>trial</th><th>reason</th></tr>"
            f"{''.join(fail_rows)}</table>"
        )
    return "\n".join(parts)


def render_report(study: optuna.Study) -> str:
    """The whole HTML document for ``study`` (plotly.js inline, once)."""
    sections: list[str] = []
    plotly_included = False
    for title, factory in _charts(study):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fig = factory()
            if not fig.data:
                raise ValueError("nothing to draw yet")
            too_few = [w for w in caught if "too small" in str(w.message)]
            if title.startswith("Parameter importances") and too_few:
                # "The number of trials is too small...": equal bars would mislead.
                raise ValueError(str(too_few[0].message))
            body = fig.to_html(full_html=False, include_plotlyjs=not plotly_included)
            plotly_included = True
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            body = f'<p class="skip">Skipped: {html.escape(reason)}</p>'
        sections.append(f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = html.escape(study.study_name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kubetune report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.skip {{ color: #777; font-style: italic; }}
</style></head>
<body>
<h1>kubetune study {name}</h1>
<p>Generated {stamp}.</p>
{_summary(study)}
{"".join(sections)}
</body></html>
"""


def write_report(storage: str, study_name: str, out_path: str | Path) -> Path:
    """Write the offline HTML report of ``study_name`` in ``storage`` to ``out_path``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ReportError(f"no study named {study_name!r} in the storage") from None
    except Exception as exc:  # driver errors vary by database; the user needs one line
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ReportError(f"cannot open the storage: {line}") from None
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(study), encoding="utf-8")
    return out
