"""The trainer SDK on its own: environment parsing, the TerminationMessage path, and the HTTP
retry policy against a small scripted HTTP server (the real report API is exercised in
tests/integration/test_report_api.py)."""

from __future__ import annotations

import ast
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import kubetune.trial as trial_module
from kubetune.trial import ReportError, TrialContext, param_env_name
from support.hold import WAIT_SECONDS

SDK_SOURCE = Path(trial_module.__file__)


class Scripted:
    """An HTTP server answering from a script of (status, headers, body) and recording posts."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, headers, body = outer.script.pop(0)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def answer(self, status: int, body: Any, **headers: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.script.append((status, headers, raw))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def reporter_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "KUBETUNE_REPORT_URL": url + "/",
        "KUBETUNE_TRIAL_TOKEN": "0." + "a" * 64,
        "KUBETUNE_NAMESPACE": "team-a",
        "KUBETUNE_STUDY": "digits",
        "KUBETUNE_TRIAL_NUMBER": "3",
        **extra,
    }


def reporter(url: str, **kw: Any) -> TrialContext:
    """A Reporter-mode SDK against ``url``. The HTTP timeout is sized for a loaded machine: a
    slow answer from the scripted server must not turn into a retry the test did not script."""
    kw.setdefault("timeout", WAIT_SECONDS)
    return TrialContext(reporter_env(url), **kw)


# -- the SDK stays stdlib-only -----------------------------------------------------------------


def test_sdk_imports_only_the_standard_library() -> None:
    """The SDK and the one kubetune module it shares (the env-name rule) use only the stdlib."""
    import sys

    allowed_own = {"kubetune._env"}
    sources = [SDK_SOURCE, SDK_SOURCE.with_name("_env.py")]
    for source in sources:
        roots = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in allowed_own:
                    continue
                roots.add(node.module.split(".")[0])
        assert roots - set(sys.stdlib_module_names) == set(), source.name


# -- parameters ----------------------------------------------------------------------------------


def test_params_come_from_kubetune_params() -> None:
    ctx = TrialContext({"KUBETUNE_PARAMS": '{"lr": 0.01, "optimizer": "sgd", "bs": 64}'})
    assert ctx.params() == {"lr": 0.01, "optimizer": "sgd", "bs": 64}
    assert ctx.param("lr") == 0.01
    assert ctx.param("momentum", default=0.9) == 0.9
    with pytest.raises(KeyError, match=r"'momentum'.*bs, lr, optimizer"):
        ctx.param("momentum")
    ctx.params()["lr"] = 1.0  # a copy: callers cannot change what later calls see
    assert ctx.param("lr") == 0.01


def test_param_falls_back_to_the_per_parameter_variables() -> None:
    ctx = TrialContext({"KUBETUNE_PARAM_WEIGHT_DECAY": "1e-4", "KUBETUNE_PARAM_OPTIMIZER": "adamw"})
    assert ctx.param("weight-decay") == 1e-4
    assert ctx.param("optimizer") == "adamw"
    assert ctx.params() == {}


def test_param_env_name_follows_the_contract() -> None:
    assert param_env_name("lr") == "KUBETUNE_PARAM_LR"
    assert param_env_name("batch.size-2") == "KUBETUNE_PARAM_BATCH_SIZE_2"


@pytest.mark.parametrize(
    ("raw", "words"), [("{not json", "not valid JSON"), ("[1, 2]", "JSON object, got list")]
)
def test_bad_kubetune_params_give_a_clear_error(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        TrialContext({"KUBETUNE_PARAMS": raw}).params()


def test_is_tuning() -> None:
    assert not TrialContext({}).is_tuning()
    assert TrialContext({"KUBETUNE_STUDY": "s"}).is_tuning()
    assert TrialContext({"KUBETUNE_PARAMS": "{}"}).is_tuning()


# -- TerminationMessage / standalone -------------------------------------------------------------


def test_standalone_report_is_false_and_complete_writes_the_termination_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "termination-log"
    ctx = TrialContext({"KUBETUNE_TERMINATION_LOG": str(log)})
    assert ctx.report(0.5, 0) is False
    assert ctx.should_prune() is False
    ctx.pruned()
    ctx.heartbeat()
    ctx.complete([0.91, 12])
    assert json.loads(log.read_text()) == {"values": [0.91, 12.0]}
    ctx.complete(0.5)  # overwrite, not append: the last result counts
    assert json.loads(log.read_text()) == {"values": [0.5]}


def test_complete_without_a_termination_log_prints_a_json_line(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    ctx = TrialContext({"KUBETUNE_TERMINATION_LOG": ""}, stdout=out, stderr=err)
    if Path("/dev/termination-log").exists():
        pytest.skip("this machine has a real /dev/termination-log")
    ctx.complete(1)
    assert json.loads(out.getvalue()) == {"values": [1.0]}
    ctx.fail("boom")
    assert "boom" in err.getvalue()


def test_unwritable_termination_log_is_a_clear_error(tmp_path: Path) -> None:
    ctx = TrialContext({"KUBETUNE_TERMINATION_LOG": str(tmp_path / "missing-dir" / "log")})
    with pytest.raises(ReportError, match="could not write the result"):
        ctx.complete(1.0)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.report(float("nan"), 0), ValueError),
        (lambda c: c.report(float("inf"), 0), ValueError),
        (lambda c: c.report(True, 0), TypeError),
        (lambda c: c.report("0.5", 0), TypeError),
        (lambda c: c.report(0.5, -1), ValueError),
        (lambda c: c.report(0.5, 1.5), TypeError),
        (lambda c: c.report(0.5, True), TypeError),
        (lambda c: c.complete([]), ValueError),
        (lambda c: c.complete("0.5"), TypeError),
        (lambda c: c.complete([0.5, float("nan")]), ValueError),
    ],
    ids=[
        "nan",
        "inf",
        "bool-value",
        "str-value",
        "negative-step",
        "float-step",
        "bool-step",
        "no-values",
        "str-values",
        "nan-in-values",
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(
    scripted: Scripted, call: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(reporter(scripted.url))
    assert scripted.requests == []


# -- Reporter mode -------------------------------------------------------------------------------


def test_reporter_mode_posts_to_the_contract_paths(scripted: Scripted) -> None:
    ctx = reporter(scripted.url)
    scripted.answer(200, {"prune": True})
    scripted.answer(200, {"state": "PRUNED"})
    scripted.answer(200, {"ok": True})
    assert ctx.report(0.25, 7) is True
    assert ctx.should_prune() is True
    ctx.pruned()
    ctx.heartbeat()
    prefix = "/v1/namespaces/team-a/studies/digits/trials/3/"
    assert [(r["path"], r["body"]) for r in scripted.requests] == [
        (prefix + "report", {"step": 7, "value": 0.25}),
        (prefix + "prune", {}),
        (prefix + "heartbeat", {}),
    ]
    headers = scripted.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer 0." + "a" * 64
    assert headers["Content-Type"] == "application/json"


def test_retries_honour_retry_after_then_succeed(scripted: Scripted) -> None:
    delays: list[float] = []
    ctx = reporter(scripted.url, sleep=delays.append, backoff=0.5)
    scripted.answer(503, {"error": "trial ledger unavailable"}, **{"Retry-After": "3"})
    scripted.answer(502, b"<html>bad gateway</html>")
    scripted.answer(200, {"state": "COMPLETE"})
    ctx.complete([0.9])
    assert delays == [3.0, 1.0]  # Retry-After, then the doubled backoff
    assert len(scripted.requests) == 3
    assert all(r["body"] == {"values": [0.9]} for r in scripted.requests)


def test_client_errors_are_raised_at_once_with_the_servers_message(scripted: Scripted) -> None:
    delays: list[float] = []
    ctx = reporter(scripted.url, sleep=delays.append)
    scripted.answer(403, {"error": "token belongs to a superseded attempt of this trial"})
    with pytest.raises(ReportError, match="superseded attempt") as refused:
        ctx.report(0.5, 1)
    assert refused.value.status == 403
    assert delays == []
    assert "a" * 64 not in str(refused.value)  # the token never shows in errors


def test_a_non_json_answer_is_a_clear_error(scripted: Scripted) -> None:
    scripted.answer(200, b"<html>a proxy page</html>")
    with pytest.raises(ReportError, match="not JSON"):
        reporter(scripted.url).complete(1.0)


def test_exhausted_retries_warn_for_report_and_raise_for_complete(scripted: Scripted) -> None:
    err = io.StringIO()
    delays: list[float] = []
    ctx = reporter(
        scripted.url,
        sleep=delays.append,
        max_attempts=3,
        backoff=1.0,
        max_backoff=1.5,
        stderr=err,
    )
    for _ in range(6):
        scripted.answer(500, {"error": "internal error"})
    assert ctx.report(0.5, 2) is False
    assert "step 2 was not recorded" in err.getvalue()
    with pytest.raises(ReportError, match="after 3 attempts: 500: internal error"):
        ctx.complete(0.5)
    assert delays == [1.0, 1.5, 1.0, 1.5]


def test_half_configured_reporter_mode_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="KUBETUNE_TRIAL_TOKEN"):
        TrialContext({"KUBETUNE_REPORT_URL": "http://x"}).report(1.0, 0)
    env = reporter_env("http://127.0.0.1:9")
    del env["KUBETUNE_TRIAL_NUMBER"]
    with pytest.raises(ValueError, match="KUBETUNE_TRIAL_NUMBER"):
        TrialContext(env).complete(1.0)


def test_long_fail_reasons_keep_their_tail(scripted: Scripted) -> None:
    scripted.answer(200, {"state": "FAIL"})
    reporter(scripted.url).fail("x" * 5000 + "ValueError: the real cause")
    sent = scripted.requests[0]["body"]["reason"]
    assert len(sent) == trial_module.MAX_REASON_CHARS
    assert sent.endswith("ValueError: the real cause")


def test_module_functions_use_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBETUNE_PARAMS", '{"lr": 0.5}')
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setattr(trial_module, "_default", None)
    assert trial_module.params() == {"lr": 0.5}
    assert trial_module.param("lr") == 0.5
    assert trial_module.is_tuning()
    assert trial_module.report(0.1, 0) is False
    trial_module.complete(0.2)
    assert json.loads((tmp_path / "log").read_text()) == {"values": [0.2]}
