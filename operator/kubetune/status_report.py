"""What ``kubetune status`` prints: a storage's studies, or one study's counts, best trial,
GPU-seconds and last trials, in the shape of ``kubectl get`` (pure given the study and the
clock, so any storage URL and local runs read alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from kubetune.status import LedgerSnapshot, TrialRecord

__all__ = ["kubectl_table", "pick_study", "study_list", "study_report"]


def pick_study(summaries: Sequence[Any], wanted: str) -> tuple[str, str]:
    """The Optuna study for ``wanted``: its own name, a TuningStudy ``name`` or
    ``namespace/name`` (the operator names studies ``<namespace>.<name>.<uid>``); the newest of
    several (a study deleted and created again). Returns (name, a note for the user or "")."""
    names = [s.study_name for s in summaries]
    if wanted in names:
        return wanted, ""
    namespace, _, name = wanted.rpartition("/")
    found = [
        s
        for s in summaries
        if s.user_attrs.get("kubetune:name") == name
        and (not namespace or s.user_attrs.get("kubetune:namespace") == namespace)
    ]
    if not found:
        known = ", ".join(sorted(names)[:10]) or "none"
        raise LookupError(f"no study {wanted!r} in this storage (studies: {known})")
    found.sort(key=lambda s: (s.datetime_start is not None, s.datetime_start or 0, s.study_name))
    note = ""
    if len(found) > 1:
        note = (
            f"{len(found)} studies match {wanted!r} (the TuningStudy was created again); "
            f"showing the newest, {found[-1].study_name}"
        )
    return found[-1].study_name, note


def kubectl_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as ``kubectl get`` prints them: upper-case headers, left-aligned, 3 spaces."""
    cells = [[h.upper() for h in headers], *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    """``kubectl``'s short durations: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _number(value: float) -> str:
    return f"{value:.6g}"


def study_list(summaries: Sequence[Any]) -> str:
    rows = []
    for s in sorted(summaries, key=lambda s: s.study_name):
        owner = s.user_attrs.get("kubetune:name")
        namespace = s.user_attrs.get("kubetune:namespace")
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else ""
        rows.append(
            [
                s.study_name,
                f"{namespace}/{owner}" if owner else "",
                str(s.n_trials),
                ",".join(d.name.lower() for d in s.directions),
                started,
            ]
        )
    return kubectl_table(["study", "tuningstudy", "trials", "directions", "started"], rows)


def _trial_reason(rec: TrialRecord) -> str:
    """The fail reason's code: ``ExitCode`` (local runs before the runners shared the
    operator's rules stored ``ExitCode: trainer exited with code 3``)."""
    if rec.state != "FAIL" or not rec.fail_reason:
        return ""
    return str(rec.fail_reason).split(":", 1)[0]


def _trial_seconds(rec: TrialRecord, now: datetime) -> str:
    if rec.datetime_start is None:
        return ""
    end = rec.datetime_complete or now
    return _duration((end - rec.datetime_start).total_seconds())


def _params_text(params: Mapping[str, Any]) -> str:
    return ",".join(
        f"{k}={_number(v) if isinstance(v, float) else v}" for k, v in sorted(params.items())
    )


def study_report(study: optuna.Study, *, last: int, now: datetime) -> str:
    """What ``kubetune status NAME`` prints (pure given the study and the clock)."""
    from kubetune.ledger import snapshot

    snap = snapshot(study)
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or [f"objective {i}" for i in range(len(directions))]
    out = _report_header(study, snap.trials, names, directions)
    out += _report_best(snap.trials, names, directions)
    out.append(_report_gpu(study, snap))
    shown = [t for t in snap.trials if t.state != "WAITING"][-last:] if last > 0 else []
    if not shown:
        return "\n".join(out) + "\n"
    out.append(f"Last {len(shown)} trials:")
    rows = [
        [
            str(t.number),
            t.state,
            ",".join(_number(v) for v in t.values or ()),
            str(t.attempt + 1),
            _trial_seconds(t, now),
            _trial_reason(t),
            _params_text(t.params),
        ]
        for t in shown
    ]
    header = ["trial", "state", "values", "attempts", "duration", "reason", "params"]
    return "\n".join(out) + "\n" + kubectl_table(header, rows)


def _report_header(
    study: optuna.Study, trials: Sequence[TrialRecord], names: Sequence[str], directions: list[str]
) -> list[str]:
    from kubetune.status import trial_counts

    out = [f"Study:        {study.study_name}"]
    owner = study.user_attrs.get("kubetune:name")
    if owner:
        out[0] += f"  (TuningStudy {study.user_attrs.get('kubetune:namespace')}/{owner})"
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(names, directions, strict=False))
    out.append(f"Objectives:   {objectives}")
    counts = trial_counts(trials)
    waiting = sum(1 for t in trials if t.state == "WAITING")
    out.append(
        f"Trials:       {counts['total']} total: {counts['running']} running, "
        f"{counts['completed']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
        f" ({counts['retried']} retried attempts, {waiting} waiting)"
    )
    return out


def _report_best(
    trials: Sequence[TrialRecord], names: Sequence[str], directions: list[str]
) -> list[str]:
    """The best trial (one objective) or the first trials of the Pareto front (several)."""
    from kubetune.status import best_trial, pareto_front

    if len(directions) == 1:
        best = best_trial(trials, directions[0])
        if best is None:
            return ["Best:         no complete trial yet"]
        value = _number((best.values or (0.0,))[0])
        return [
            f"Best:         trial {best.number}: {names[0]}={value}",
            f"              {_params_text(best.params) or '(no parameters)'}",
        ]
    front = pareto_front(trials, directions)
    out = [f"Pareto front: {len(front)} trials" if front else "Pareto front: empty"]
    for t in front[:5]:
        values = ", ".join(f"{n}={_number(v)}" for n, v in zip(names, t.values or (), strict=False))
        out.append(f"              trial {t.number}: {values}  {_params_text(t.params)}")
    return out


def _report_gpu(study: optuna.Study, snap: LedgerSnapshot) -> str:
    from kubetune.ledger import is_usage_attr
    from kubetune.status import gpu_seconds_saved

    if not any(is_usage_attr(k) for k in study.user_attrs):
        return "GPU-seconds:  not recorded (kubetune run does not account GPU time)"
    states = {t.number: t.state for t in snap.trials}
    used = sum(u.gpu_seconds for u in snap.usage.values())
    saved = gpu_seconds_saved(snap.usage, states)
    return (
        f"GPU-seconds:  {used:.1f} used, {saved:.1f} saved by pruning "
        "(finished attempts; the TuningStudy's status adds the running ones)"
    )
