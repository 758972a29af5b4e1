"""``kubetune report``: an offline HTML file from a real Optuna study in SQLite."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kubetune.report_html import ReportError, write_report


def make_study(storage: str, name: str, n: int, directions: list[str]) -> None:
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i in range(n):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        opt = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        if len(directions) == 1:  # Optuna keeps no curves for multi-objective studies
            for step in range(3):
                trial.report(lr * (step + 1), step)
        if i == n - 1 and n > 2:
            trial.set_user_attr("kubetune:fail_reason", "ExitCode: trainer exited with code 1")
            study.tell(trial, state=TrialState.FAIL)
        elif len(directions) == 1:
            study.tell(trial, lr + (opt == "adam"))
        else:
            study.tell(trial, [lr, float(i)])


def sections(html: str) -> dict[str, str]:
    found = re.findall(r"<section><h2>(.*?)</h2>\n(.*?)\n</section>", html, flags=re.S)
    return {title: body for title, body in found}


def test_report_is_offline_and_has_the_charts(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    make_study(storage, "digits", 8, ["maximize"])
    out = write_report(storage, "digits", tmp_path / "out" / "report.html")
    html = out.read_text()
    assert '<script src="http' not in html  # plotly.js is inline
    assert html.count("Plotly.newPlot") >= 4
    parts = sections(html)
    for title in (
        "Optimization history",
        "Parameter importances",
        "Parallel coordinates",
        "Intermediate values",
    ):
        assert "Plotly.newPlot" in parts[title], title
    assert "ExitCode: trainer exited with code 1" in html
    assert "complete 7" in html and "fail 1" in html


def test_too_few_trials_skip_importances_gracefully(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    make_study(storage, "one", 1, ["maximize"])
    html = write_report(storage, "one", tmp_path / "r.html").read_text()
    parts = sections(html)
    assert parts["Parameter importances"].startswith('<p class="skip">Skipped:')
    assert "Plotly.newPlot" in parts["Optimization history"]


def test_multi_objective_report_has_a_pareto_front(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    make_study(storage, "mo", 6, ["maximize", "minimize"])
    html = write_report(storage, "mo", tmp_path / "r.html").read_text()
    parts = sections(html)
    assert "Plotly.newPlot" in parts["Pareto front"]
    assert "modify target" not in html  # custom targets must not skip importances
    assert any(title.startswith("Optimization history:") for title in parts)


def test_unknown_study_is_a_clear_error(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    make_study(storage, "there", 2, ["maximize"])
    with pytest.raises(ReportError, match="no study named 'missing'"):
        write_report(storage, "missing", tmp_path / "r.html")
