"""The ``kubetune`` command line: crd, plan, run, report, status, operator.

Heavy imports (optuna, kopf, torch-free trainer pieces) happen inside each command so that
``kubetune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.spec import SpecError, load_manifest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

__all__ = ["main"]


def _console() -> Console:
    from rich.console import Console

    return Console()


def cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.crd import crd_yaml

    text = crd_yaml()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.suffix not in {".yaml", ".yml"}:
        out = out / "kubetune.io_tuningstudies.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"Wrote {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import optuna
    from rich.table import Table

    from kubetune.jobs import render_job
    from kubetune.sampling import directions, grid_trials, make_pruner, make_sampler
    from kubetune.search_space import distributions, space_size, suggest_params

    ts = load_manifest(args.file)
    spec = ts.spec
    con = _console()
    con.print(f"[bold]TuningStudy {ts.metadata.name}[/bold] is valid.")
    table = Table("parameter", "distribution", "when", title="Search space")
    for p in spec.search_space:
        when = p.when.describe() if p.when else ""
        table.add_row(p.name, repr(distributions(spec)[p.name]), when)
    con.print(table)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(spec)
    pruner = make_pruner(spec)
    objectives = ", ".join(f"{o.name} ({o.direction})" for o in spec.objectives)
    con.print(f"Objectives: {objectives}")
    con.print(f"Sampler: {type(sampler).__name__}  Pruner: {type(pruner).__name__}")
    b = spec.budget
    con.print(
        f"Budget: maxTrials={b.max_trials} parallelism={b.parallelism} "
        f"maxFailedTrials={b.max_failed_trials} deadlineSeconds={b.deadline_seconds} "
        f"maxGpuSeconds={b.max_gpu_seconds}"
    )
    points, cap = space_size(spec), grid_trials(spec)
    if points is not None and cap is not None:
        line = f"Grid: {points} points"
        if cap > points:
            line += f" + {cap - points} warm-start trials"
        if cap < b.max_trials:
            line += (
                f"; the study ends after {cap} trials (SearchSpaceExhausted), "
                f"before maxTrials={b.max_trials}"
            )
        con.print(line)
    study = optuna.create_study(sampler=sampler, pruner=pruner, directions=directions(spec))
    for fixed in spec.enqueue_trials:
        study.enqueue_trial(dict(fixed), skip_if_exists=True)
    shown = min(args.trials, b.max_trials, cap or b.max_trials)
    proposals = Table("trial", "parameters", title=f"First {shown} proposals")
    first_job: dict[str, Any] | None = None
    for _ in range(shown):
        trial = study.ask()
        params = suggest_params(trial, spec)
        proposals.add_row(str(trial.number), json.dumps(params))
        if first_job is None:
            first_job = render_job(
                ts.metadata.model_dump(exclude_none=True),
                spec,
                trial.number,
                0,
                params,
                report_url="http://kubetune-report.kubetune.svc:8082",
                token="<per-trial token>",
                optuna_study_name="<namespace>.<name>.<uid>",
            )
        # A neutral value keeps model-based samplers from stalling on missing results.
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    con.print(proposals)
    if first_job is not None:
        import yaml

        con.print("[bold]Trial 0 becomes this Job:[/bold]")
        con.print(yaml.safe_dump(first_job, sort_keys=False), markup=False, highlight=False)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kubetune.local import LocalRunError, run_local

    try:
        result = run_local(
            args.file,
            storage=args.storage,
            parallelism=args.parallelism,
            max_trials=args.max_trials,
        )
    except LocalRunError as e:
        raise UserFacingError(str(e)) from None
    return result.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from kubetune.report_html import ReportError, write_report

    try:
        write_report(args.storage, args.study, args.out)
    except ReportError as e:
        raise UserFacingError(str(e)) from None
    print(f"Wrote {args.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    summaries = optuna.study.get_all_study_summaries(args.storage)
    con = _console()
    from rich.table import Table

    table = Table("study", "trials", "best value", "started")
    for s in summaries:
        best = "" if s.best_trial is None else f"{s.best_trial.values}"
        table.add_row(s.study_name, str(s.n_trials), best, str(s.datetime_start or ""))
    con.print(table)
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from kubetune.operator_main import run_operator

    run_operator(
        namespaces=args.namespace or None,
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        report_port=args.report_port,
        log_format=args.log_format,
    )
    return 0


class UserFacingError(Exception):
    """Raised by commands for problems the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Kubernetes-native hyperparameter tuning on Optuna."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crd", help="write the TuningStudy CRD generated from the spec model")
    p.add_argument("--out", default="crds", help="folder or .yaml file, or - for stdout")
    p.set_defaults(func=cmd_crd)

    p = sub.add_parser("plan", help="validate a manifest and show what it would run")
    p.add_argument("file")
    p.add_argument("--trials", type=int, default=5, help="proposals to show")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a study locally (no cluster): trials as processes")
    p.add_argument("file")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite file)")
    p.add_argument("--parallelism", type=int, default=None)
    p.add_argument("--max-trials", type=int, default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="write an offline HTML report of a study")
    p.add_argument("study")
    p.add_argument("--storage", required=True)
    p.add_argument("--out", default="report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="list the studies in a storage")
    p.add_argument("--storage", required=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("operator", help="run the Kubernetes operator")
    p.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeat)")
    p.add_argument("--all-namespaces", "-A", action="store_true")
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=8081)
    p.add_argument("--report-port", type=int, default=8082)
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SpecError as e:
        print(f"error: invalid TuningStudy:\n{e}", file=sys.stderr)
        return 2
    except UserFacingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
