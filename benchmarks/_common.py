"""Shared plumbing: the conditions a figure was measured under, percentiles, JSON results.

Every benchmark prints its figures *and* the machine, versions, load and storage it ran on,
because a number without its conditions cannot be compared with the next run's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import signal
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# A clean checkout without `pip install -e .` still runs: use the source folders.
for _name, _folder in (("kubetune", "operator"), ("kubetune_trainer", "trainer-image")):
    if importlib.util.find_spec(_name) is None:
        sys.path.insert(0, str(REPO / _folder))
# The tests' helpers (the harness, the one manifest factory in support/) are shared.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conditions(storage: str | None = None, **extra: Any) -> dict[str, Any]:
    """Date, machine, versions and load: what a reader needs to trust or compare a figure.

    ``storage`` is described by its scheme only (no credentials in results).
    """
    try:
        load1, load5, _ = os.getloadavg()
    except OSError:
        load1 = load5 = math.nan
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({cpu_model()})",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
        "optuna": _version("optuna"),
        "torch": _version("torch"),
        "kopf": _version("kopf"),
        "kubetune": _version("kubetune"),
        "storage": storage_kind(storage) if storage else None,
    }
    info.update(extra)
    return info


def storage_kind(url: str) -> str:
    """``postgresql+psycopg2://user:pw@host/db`` -> ``postgresql+psycopg2`` (no secrets)."""
    if url.startswith("postgresql") and "://" in url:
        return url.split("://", 1)[0] + f" (server {postgres_version_hint()})"
    return url.split("://", 1)[0] if "://" in url else url


def postgres_version_hint() -> str:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return f"PostgreSQL {bindirs[0].parent.name}" if bindirs else "PostgreSQL"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks stop the servers this run started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--full``, ``--smoke`` and ``--out``."""
    p = argparse.ArgumentParser(description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full-size version (slow)")
    size.add_argument(
        "--smoke", action="store_true", help="the tiniest version (seconds; for tests)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help=f"folder for the JSON result (default: {RESULTS.relative_to(REPO)})",
    )
    return p


def size_name(args: argparse.Namespace) -> str:
    return "full" if args.full else "smoke" if args.smoke else "short"


def write_result(out: Path, name: str, result: Mapping[str, Any]) -> Path:
    """Write ``<out>/<name>-<UTC timestamp>.json`` and ``<out>/<name>.json`` (the latest)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(_finite(result), indent=2, default=str, allow_nan=False)
    (out / f"{name}-{stamp}.json").write_text(text + "\n")
    latest = out / f"{name}.json"
    latest.write_text(text + "\n")
    return latest


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_conditions(info: Mapping[str, Any]) -> None:
    print("Conditions:")
    for key, value in info.items():
        print(f"  {key}: {value}")
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table (no dependencies, pastes into Markdown code blocks)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"
