"""A real Prometheus for tests, and checks of kubetune's dashboard and rules against it.

Everything takes a metrics URL, so the same checks run against the metrics class served by a
test server and against the real operator's ``/metrics``::

    with running_prometheus("http://127.0.0.1:8080/metrics", tmp_path, [RULES]) as prom:
        prom.wait_for_samples(4)
        assert dashboard_query_problems(prom, load_dashboard(), {"namespace": ".*"}) == []
        assert missing_metric_names(metric_names_of_dashboard(load_dashboard()),
                                    fetch_exposed_names(metrics_url)) == set()

Prometheus is Debian's ``prometheus`` binary (``apt-get install prometheus``), started on a free
port with ``scrape_interval: 1s``; nothing here mocks it.

Nothing here depends on the machine's speed (docs/testing.md): waits poll a state with a
generous deadline (:data:`WAIT_SECONDS`), a scrape that times out on a loaded machine only
delays :meth:`Prometheus.wait_for_samples`, and queries can be evaluated at a fixed instant
(``at``) so that ``rate()``/``increase()`` windows do not slide while slow tests run.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts/kubetune/files/grafana-dashboard.json"
RULES = REPO / "charts/kubetune/files/prometheus-rules.yaml"
RULES_TEST = REPO / "monitoring/rules-test.yaml"
JOB = "kubetune-operator"
#: Grafana's built-in variables, replaced by values Prometheus accepts (scrape interval is 1s).
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
#: How long a wait may take before it fails; a passing run never comes close.
WAIT_SECONDS = 300.0


class PrometheusError(RuntimeError):
    """Prometheus answered an error (the message is Prometheus' own)."""


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``, or a clear error saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is not on PATH: apt-get install -y --no-install-recommends prometheus"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str, timeout: float = 60.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # Prometheus answers 400/422 with a JSON body
        return json.load(error)


class Prometheus:
    """A running Prometheus: ``query()`` it, wait for scrapes, ``stop()`` it."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises :class:`PrometheusError`."""
        query = urllib.parse.urlencode(params, doseq=True)
        body = _get_json(f"{self.url}/api/v1/{path}?{query}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now, or at the Unix time ``at``; a list of series (scalars become
        one)."""
        data = self.api("query", query=expr, **({} if at is None else {"time": f"{at:.3f}"}))
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_until(self, what: str, check: Any, timeout: float = WAIT_SECONDS) -> None:
        """Poll ``check()`` until it is true; a timeout (or Prometheus exiting) is an error
        naming ``what`` and how long it waited."""
        start = time.monotonic()
        while not check():
            waited = time.monotonic() - start
            if waited > timeout or self.process.poll() is not None:
                why = (
                    f"Prometheus exited with code {self.process.returncode}"
                    if self.process.poll() is not None
                    else f"not true after {waited:.0f} s (deadline {timeout:.0f} s)"
                )
                raise TimeoutError(
                    f"Gave up waiting for {what}: {why}; log: {self.log.read_text()}"
                )
            time.sleep(0.25)

    def wait_for_samples(self, count: int, job: str = JOB) -> None:
        """Wait until the job has been scraped successfully ``count`` times in the last minute.

        Failed scrapes (a loaded machine can miss the 1 s scrape timeout) do not count and do
        not reset the count.
        """

        def scraped() -> bool:
            result = self.query(f'sum_over_time(up{{job="{job}"}}[1m])')
            return bool(result) and float(result[0]["value"][1]) >= count

        self.wait_until(f"{count} scrapes of {job}", scraped)

    def wait_for_scrape_after(self, moment: float, job: str = JOB) -> None:
        """Wait until a scrape of the job that started after the Unix time ``moment`` succeeded:
        from then on Prometheus holds everything the target exposed at ``moment``."""

        up = f'up{{job="{job}"}}'

        def scraped() -> bool:
            # timestamp() of a bare selector is the scrape's start; of an expression such as
            # `up == 1` it would be the evaluation time, true at once.
            return bool(self.query(f"timestamp({up}) > {moment:.3f} and {up} == 1"))

        self.wait_until(f"a scrape of {job} after {moment:.3f}", scraped)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(
    workdir: Path, metrics_url: str, rule_files: Sequence[Path] = (), job: str = JOB
) -> Path:
    """A Prometheus config scraping ``metrics_url`` every second."""
    target = urllib.parse.urlsplit(metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scheme": target.scheme or "http",
                "metrics_path": target.path or "/metrics",
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@contextmanager
def running_prometheus(
    metrics_url: str, workdir: Path, rule_files: Sequence[Path] = (), job: str = JOB
) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``metrics_url``, wait until it is ready, stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, metrics_url, rule_files, job)
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(process, f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        prom.wait_until("Prometheus to be ready", ready)
        yield prom
    finally:
        prom.stop()


@contextmanager
def serve_app(app: web.Application) -> Iterator[str]:
    """Run an aiohttp app on a free port in a thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=WAIT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=WAIT_SECONDS)
        loop.close()


# -- the dashboard and the rules --------------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def load_rules(path: Path = RULES) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included."""
    found: list[tuple[str, str]] = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner.get("title", "?"), target.get("expr", "")))
    return found


def rule_queries(rules: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(alert or record name, expr) for every rule of a ``groups:`` document."""
    return [
        (rule.get("alert") or rule.get("record") or "?", str(rule.get("expr", "")))
        for group in rules.get("groups", [])
        for rule in group.get("rules", [])
    ]


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name``/``${name}`` by ``variables`` and the built-ins."""
    values = {**GRAFANA_BUILTINS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def dashboard_query_problems(
    prom: Prometheus,
    dashboard: Mapping[str, Any],
    variables: Mapping[str, str],
    at: float | None = None,
) -> list[str]:
    """Every query that fails to evaluate or returns no series (now, or at Unix time ``at``),
    as readable lines."""
    problems = []
    for title, expr in dashboard_queries(dashboard):
        concrete = substitute(expr, variables)
        try:
            if not prom.query(concrete, at):
                problems.append(f"{title}: no series for {concrete}")
        except PrometheusError as error:
            problems.append(f"{title}: {error} in {concrete}")
    return problems


def variable_problems(prom: Prometheus, dashboard: Mapping[str, Any]) -> list[str]:
    """Template variables of the form ``label_values(selector, label)`` that resolve to nothing."""
    problems = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text)
        if match is None:
            problems.append(f"variable {variable.get('name')}: not label_values(...): {text}")
            continue
        selector = substitute(match.group(1), {"namespace": ".*", "study": ".*"})
        try:
            values = prom.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        except PrometheusError as error:
            problems.append(f"variable {variable.get('name')}: {error}")
            continue
        if not values:
            problems.append(f"variable {variable.get('name')}: no values for {text}")
    return problems


def structure_problems(dashboard: Mapping[str, Any]) -> list[str]:
    """What makes the dashboard JSON unusable by Grafana's sidecar or breaks our conventions."""
    problems = []
    if int(dashboard.get("schemaVersion", 0)) < 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} < 39")
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append("uid and title are required")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("a `datasource` variable of type datasource/prometheus is required")
    for name in ("namespace", "study"):
        query = str(variables.get(name, {}).get("query", ""))
        if not query.startswith("label_values("):
            problems.append(f"variable {name} must come from label_values(...)")
    ids = []
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "?")
        ids.append(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{title}: gridPos needs integer x, y, w, h")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: gridPos wider than 24 columns")
        if panel.get("type") == "row":
            continue
        datasource = panel.get("datasource", {})
        if datasource.get("uid") != "${datasource}":
            problems.append(f"{title}: datasource must be the ${{datasource}} variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{title}: no targets")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{title}: a target without expr")
            if target.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{title}: target datasource must be ${{datasource}}")
    if None in ids or len(set(ids)) != len(ids):
        problems.append(f"panel ids must be present and unique: {ids}")
    return problems


_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan", "Inf", "NaN"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (ignores strings, matchers, ranges, groupings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()
        if before.isdigit() or before in ".$" or after.startswith("("):
            continue  # durations/numbers, variables, functions and aggregations
        if match.group(0) not in _KEYWORDS:
            names.add(match.group(0))
    return names


def metric_names_of_dashboard(dashboard: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for _, expr in dashboard_queries(dashboard):
        names |= metric_names(expr)
    for variable in dashboard.get("templating", {}).get("list", []):
        match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", str(variable.get("query", "")))
        if match:
            names |= metric_names(match.group(1))
    return names


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
}


def exposed_names(exposition: str) -> set[str]:
    """Every series name the exposition text declares, including families without samples."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def fetch_exposed_names(metrics_url: str) -> set[str]:
    with urllib.request.urlopen(metrics_url, timeout=WAIT_SECONDS) as response:
        return exposed_names(response.read().decode("utf-8"))


def missing_metric_names(used: set[str], exposed: set[str]) -> set[str]:
    return used - exposed


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; the caller asserts on ``returncode`` and shows ``stdout``/``stderr``."""
    return subprocess.run(
        [binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )
