"""The ``kubetune`` command line: crd, plan, run, report, status, operator.

Heavy imports (optuna, kopf, torch-free trainer pieces) happen inside each command so that
``kubetune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import config
from kubetune.spec import SpecError, load_manifest

if TYPE_CHECKING:
    from rich.console import Console

    from kubetune.spec import TuningStudy, TuningStudySpec

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

    ts = load_manifest(args.file)
    con = _console()
    con.print(f"[bold]TuningStudy {ts.metadata.name}[/bold] is valid.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _print_space(con, ts.spec)
    _print_settings(con, ts.spec)
    first_job = _print_proposals(con, ts, args.trials)
    if first_job is not None:
        import yaml

        con.print("[bold]Trial 0 becomes this Job:[/bold]")
        con.print(yaml.safe_dump(first_job, sort_keys=False), markup=False, highlight=False)
    return 0


def _print_space(con: Console, spec: TuningStudySpec) -> None:
    from rich.table import Table

    from kubetune.search_space import distributions

    table = Table("parameter", "distribution", "when", title="Search space")
    dists = distributions(spec)
    for p in spec.search_space:
        table.add_row(p.name, repr(dists[p.name]), p.when.describe() if p.when else "")
    con.print(table)


def _print_settings(con: Console, spec: TuningStudySpec) -> None:
    """Objectives, sampler and pruner, budget, and where a grid ends the study."""
    from kubetune.sampling import grid_trials, make_pruner, make_sampler
    from kubetune.search_space import space_size

    objectives = ", ".join(f"{o.name} ({o.direction})" for o in spec.objectives)
    con.print(f"Objectives: {objectives}")
    sampler, pruner = type(make_sampler(spec)).__name__, type(make_pruner(spec)).__name__
    con.print(f"Sampler: {sampler}  Pruner: {pruner}")
    b = spec.budget
    con.print(
        f"Budget: maxTrials={b.max_trials} parallelism={b.parallelism} "
        f"maxFailedTrials={b.max_failed_trials} deadlineSeconds={b.deadline_seconds} "
        f"maxGpuSeconds={b.max_gpu_seconds}"
    )
    points, cap = space_size(spec), grid_trials(spec)
    if points is None or cap is None:
        return
    line = f"Grid: {points} points"
    if cap > points:
        line += f" + {cap - points} warm-start trials"
    if cap < b.max_trials:
        line += (
            f"; the study ends after {cap} trials (SearchSpaceExhausted), "
            f"before maxTrials={b.max_trials}"
        )
    con.print(line)


def _print_proposals(con: Console, ts: TuningStudy, wanted: int) -> dict[str, Any] | None:
    """The sampler's first proposals (told PRUNED: a neutral value keeps model-based samplers
    from stalling on missing results); returns trial 0's Job."""
    import optuna
    from rich.table import Table

    from kubetune.jobs import render_job
    from kubetune.sampling import directions, grid_trials, make_pruner, make_sampler
    from kubetune.search_space import suggest_params

    spec = ts.spec
    study = optuna.create_study(
        sampler=make_sampler(spec), pruner=make_pruner(spec), directions=directions(spec)
    )
    for fixed in spec.enqueue_trials:
        study.enqueue_trial(dict(fixed), skip_if_exists=True)
    shown = min(wanted, spec.budget.max_trials, grid_trials(spec) or spec.budget.max_trials)
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
                report_url=f"http://kubetune-report.kubetune.svc:{config.DEFAULT_REPORT_PORT}",
                token="<per-trial token>",
                optuna_study_name="<namespace>.<name>.<uid>",
            )
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    con.print(proposals)
    return first_job


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
    """No NAME: list the storage's studies. NAME: one study's counts, best trial, GPU-seconds
    and last trials. Without ``--storage`` NAME is a local run's (``kubetune-NAME.db`` here)."""
    import optuna

    from kubetune.ledger import OPEN_ERRORS
    from kubetune.status_report import pick_study, study_list, study_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage is None and args.name is None:
        raise UserFacingError("give a study NAME (a local run's), --storage URL, or both")
    storage = args.storage or _local_storage(args.name)
    try:
        summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
        if args.name is None:
            print(study_list(summaries), end="")
            return 0
        name, note = pick_study(summaries, args.name)
        study = optuna.load_study(study_name=name, storage=storage)
        text = study_report(study, last=args.last, now=datetime.now(UTC))
    except LookupError as e:
        raise UserFacingError(str(e)) from None
    except OPEN_ERRORS as e:
        from kubetune.local_summary import redact

        raise UserFacingError(f"cannot read storage {redact(storage)}: {_first_line(e)}") from None
    if note:
        print(note)
    print(text, end="")
    return 0


def _first_line(error: BaseException) -> str:
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _local_storage(name: str) -> str:
    """The storage ``kubetune run NAME.yaml`` uses by default; refused when it does not exist
    (opening a SQLite URL would create an empty database)."""
    from kubetune.local import default_storage

    url = default_storage(name)
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        raise UserFacingError(
            f"no local run of {name!r} here ({path} does not exist); "
            "pass --storage URL for another storage"
        )
    return url


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

    p = sub.add_parser(
        "status",
        help="one study's trials, best result and GPU-seconds; or list a storage's studies",
    )
    p.add_argument(
        "name",
        nargs="?",
        help="study: an Optuna study name, a TuningStudy name or namespace/name; alone, the "
        "local run of that name (kubetune-NAME.db here)",
    )
    p.add_argument("--storage", default=None, help="Optuna storage URL")
    p.add_argument("--last", type=int, default=10, help="trials to list (default 10)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("operator", help="run the Kubernetes operator")
    p.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeat)")
    p.add_argument("--all-namespaces", "-A", action="store_true")
    p.add_argument("--metrics-port", type=int, default=config.DEFAULT_METRICS_PORT)
    p.add_argument("--health-port", type=int, default=config.DEFAULT_HEALTH_PORT)
    p.add_argument("--report-port", type=int, default=config.DEFAULT_REPORT_PORT)
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
