"""Generate kubetune's Grafana dashboard (charts/kubetune/files/grafana-dashboard.json).

The JSON is committed; a test checks it equals what this script builds, so edit the panels here
and run ``python monitoring/dashboard.py`` (``--check`` exits 1 when the file is stale).
Every query uses only metrics of ``kubetune.metrics``; ``rate()``/``increase()`` only on its
process counters and histograms, never on the ledger gauges.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "charts/kubetune/files/grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
STUDY = 'namespace=~"$namespace",study=~"$study"'
NS = 'namespace=~"$namespace"'

Panel = dict[str, Any]


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend, **extra}


def _panel(
    kind: str,
    title: str,
    description: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    **extra: Any,
) -> Panel:
    x, y, w, h = grid
    panel: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        panel["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        panel["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    panel.update(extra)
    return panel


def _row(title: str, y: int) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}  # fmt: skip


def _quantiles(metric: str, by: str = "", selector: str = "") -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    legend_by = f" {{{{{by}}}}}" if by else ""
    matchers = f"{{{selector}}}" if selector else ""
    return [
        _target(
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{matchers}[$__rate_interval])))",
            f"p{round(q * 100)}{legend_by}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def panels() -> list[Panel]:
    """The dashboard's panels, top to bottom; each description says the question it answers."""
    out: list[Panel] = [_row("Studies", 0)]
    out += [
        _panel(
            "stat", "Optuna storage",
            "Can the operator reach the Optuna storage (the trial ledger)? DOWN stops all studies.",
            (0, 1, 4, 4),
            [_target("min(kubetune_storage_up)", "storage")],
            mappings=[{"type": "value", "options": {
                "0": {"text": "DOWN", "color": "red", "index": 0},
                "1": {"text": "UP", "color": "green", "index": 1}}}],
        ),
        _panel(
            "stat", "Operator version",
            "Which kubetune version is running (and is it being scraped at all)?",
            (4, 1, 4, 4),
            [_target("count by (version) (kubetune_build_info)", "{{version}}",
                     instant=True)],
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "textMode": "name", "colorMode": "none", "graphMode": "none"},
        ),
        _panel(
            "stat", "Studies by condition",
            "How many studies are running, finished, failed or invalid?",
            (8, 1, 8, 4),
            [_target(f"sum by (condition) (kubetune_studies{{{NS}}})", "{{condition}}")],
        ),
        _panel(
            "stat", "Pruned share",
            "Which share of finished trials did the pruner stop early?",
            (16, 1, 4, 4),
            [_target(
                f'sum(kubetune_study_trials{{{STUDY},state="PRUNED"}}) / clamp_min('
                f'sum(kubetune_study_trials{{{STUDY},state=~"COMPLETE|PRUNED|FAIL"}}), 1)',
                "pruned")],
            unit="percentunit",
        ),
        _panel(
            "stat", "GPU-hours saved by pruning",
            "How much GPU time did pruning save, against the time the studies used?",
            (20, 1, 4, 4),
            [_target(f"sum(kubetune_study_gpu_seconds_saved_by_pruning{{{STUDY}}}) / 3600",
                     "saved"),
             _target(f"sum(kubetune_study_gpu_seconds{{{STUDY}}}) / 3600", "used", "B")],
        ),
        _panel(
            "timeseries", "Best value per study",
            "Is each study still improving, or has its best value levelled off?",
            (0, 5, 12, 8),
            [_target(f"kubetune_study_best_value{{{STUDY}}}",
                     "{{namespace}}/{{study}} {{objective}}")],
        ),
        _panel(
            "timeseries", "Running trials vs parallelism",
            "Are the studies using the parallelism they are allowed? A gap means trials wait "
            "(quota, Kueue, scheduling) or the budget is nearly spent.",
            (12, 5, 12, 8),
            [_target(f"sum by (namespace, study) (kubetune_trials_running{{{STUDY}}})",
                     "running {{namespace}}/{{study}}"),
             _target(f"sum by (namespace, study) (kubetune_study_parallelism{{{STUDY}}})",
                     "parallelism {{namespace}}/{{study}}", "B")],
        ),
        _panel(
            "timeseries", "Trials by state (ledger)",
            "How many trials has each study completed, pruned, failed, retried, and how many "
            "run now? From the Optuna ledger, so an operator restart does not reset it.",
            (0, 13, 12, 8),
            [_target(f"sum by (state) (kubetune_study_trials{{{STUDY}}})", "{{state}}")],
        ),
        _panel(
            "timeseries", "Trial outcomes per hour",
            "How fast are trials finishing, and with which outcome (recorded by this operator "
            "process)?",
            (12, 13, 12, 8),
            [_target(f"sum by (state) (rate(kubetune_trials_total{{{STUDY}}}"
                     f"[$__rate_interval])) * 3600", "{{state}}")],
        ),
        _panel(
            "timeseries", "GPU-hours used and saved by pruning",
            "Where does the GPU time go, and how much did pruning give back?",
            (0, 21, 12, 8),
            [_target(f"sum by (namespace, study) (kubetune_study_gpu_seconds{{{STUDY}}}) / 3600",
                     "used {{namespace}}/{{study}}"),
             _target(f"sum by (namespace, study) "
                     f"(kubetune_study_gpu_seconds_saved_by_pruning{{{STUDY}}}) / 3600",
                     "saved {{namespace}}/{{study}}", "B")],
        ),
        _panel(
            "timeseries", "Time since last progress",
            "Is any study stuck? Time since a trial of the study last started, reported or "
            "finished.",
            (12, 21, 12, 8),
            [_target(f"time() - kubetune_study_last_progress_timestamp_seconds{{{STUDY}}}",
                     "{{namespace}}/{{study}}")],
            unit="s",
        ),
        _panel(
            "heatmap", "Trial duration distribution",
            "How long do trials take, and are pruned trials much shorter than complete ones?",
            (0, 29, 12, 8),
            [_target(f"sum by (le) (increase(kubetune_trial_duration_seconds_bucket{{{NS}}}"
                     f"[$__rate_interval]))", "{{le}}", format="heatmap")],
            unit="s",
            options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                     "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                     "tooltip": {"show": True, "yHistogram": False}},
        ),
        _panel(
            "timeseries", "Trial duration quantiles by state",
            "What are the median and tail trial durations for each outcome?",
            (12, 29, 12, 8),
            _quantiles("kubetune_trial_duration_seconds", "state", NS)[:2],
            unit="s",
        ),
        _row("Operator", 37),
        _panel(
            "timeseries", "Job launch latency",
            "When a trial slot frees up, how long until its Job exists?",
            (0, 38, 8, 8),
            _quantiles("kubetune_job_launch_latency_seconds"),
            unit="s",
        ),
        _panel(
            "timeseries", "Reconcile latency",
            "How long does one reconcile pass take?",
            (8, 38, 8, 8),
            _quantiles("kubetune_reconcile_duration_seconds"),
            unit="s",
        ),
        _panel(
            "timeseries", "Optuna ask latency",
            "How long does the sampler take to propose parameters?",
            (16, 38, 8, 8),
            _quantiles("kubetune_optuna_ask_duration_seconds"),
            unit="s",
        ),
        _panel(
            "timeseries", "Report API errors",
            "Are trainers failing to report (401/403: bad or stale token, 404: unknown trial, "
            "409: trial no longer running, 5xx: operator or storage trouble)?",
            (0, 46, 12, 8),
            [_target('sum by (route, code) (rate(kubetune_report_requests_total'
                     '{code=~"4..|5.."}[$__rate_interval]))', "{{route}} {{code}}"),
             _target("sum(rate(kubetune_report_requests_total[$__rate_interval]))",
                     "all requests", "B")],
            unit="reqps",
        ),
        _panel(
            "timeseries", "Reconcile errors",
            "Is the operator failing to reconcile, and why?",
            (12, 46, 12, 8),
            [_target("sum by (reason) (increase(kubetune_reconcile_errors_total"
                     "[$__rate_interval]))", "{{reason}}")],
        ),
    ]  # fmt: skip
    for number, panel in enumerate(out, start=1):
        panel["id"] = number
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


def build_dashboard() -> dict[str, Any]:
    return {
        "uid": "kubetune-overview",
        "title": "kubetune",
        "description": "Hyperparameter studies run by the kubetune operator.",
        "tags": ["kubetune", "optuna", "hyperparameter-tuning"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                _variable(
                    "namespace", "Namespace", "label_values(kubetune_study_parallelism, namespace)"
                ),
                _variable(
                    "study",
                    "Study",
                    'label_values(kubetune_study_parallelism{namespace=~"$namespace"}, study)',
                ),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python monitoring/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"Wrote {OUTPUT}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
