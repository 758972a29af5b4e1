"""Hostile clients against the report API, wired as the operator wires it, on real PostgreSQL.

The server is ``create_report_app`` over ``Ledger.resolve`` with a ``TokenSigner`` (what
``kubetune.handlers.startup`` serves on port 8082). Every rejected request must answer its
precise status, and the Optuna ledger must be byte-for-byte the same afterwards; a bounded
flood on 127.0.0.1 must leave good requests working (their latency is printed, not asserted).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import optuna
import pytest

from harness import PostgresServer
from kubetune.ledger import Ledger, make_storage
from kubetune.reporting import ReportServer
from kubetune.spec import parse_manifest
from kubetune.tokens import TokenSigner
from reliability.world import SOAK, study_manifest
from support.hold import WAIT_SECONDS

KEY = b"abuse-test-key-0123456789abcdef"
SIGNER = TokenSigner(KEY)
OTHER_SIGNER = TokenSigner(b"some-other-key-0123456789abcdef")
MAX_BODY = 16384


@dataclass
class Ledgered:
    """Studies ``a`` and ``b`` in namespaces ``ns1`` and ``ns2`` (same names on purpose)."""

    ledger: Ledger
    reader: optuna.storages.RDBStorage  # a separate connection pool, no cache shared
    base: str
    studies: dict[tuple[str, str], optuna.Study]

    def fingerprint(self) -> str:
        """Everything the ledger holds about every study and trial, read fresh."""
        storage = self.reader
        out = []
        for summary in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out.append(
                {
                    "study": summary.study_name,
                    "attrs": study.user_attrs,
                    "trials": [
                        {
                            "number": t.number,
                            "state": t.state.name,
                            "values": t.values,
                            "params": t.params,
                            "intermediate": sorted(t.intermediate_values.items()),
                            "user_attrs": t.user_attrs,
                        }
                        for t in study.get_trials(deepcopy=False)
                    ],
                }
            )
        return json.dumps(out, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def ledgered(postgres_server: PostgresServer) -> Iterator[Ledgered]:
    """Each study: trial 0 RUNNING (attempt 0), trial 1 RUNNING at attempt 1, trial 2 COMPLETE.

    Module-scoped (one database for the file): every test compares the ledger with itself
    before and after, and only the flood writes, to a trial no other test touches.
    """
    if not postgres_server.is_running():
        postgres_server.start()
    db = postgres_server.create_database("abuse")
    fresh_database = postgres_server.url(db)
    ledger = Ledger(make_storage(fresh_database))
    studies: dict[tuple[str, str], optuna.Study] = {}
    for ns in ("ns1", "ns2"):
        for name in ("a", "b"):
            spec = parse_manifest(study_manifest(name, namespace=ns)).spec
            study = ledger.open(spec, namespace=ns, name=name, uid=f"uid-{ns}-{name}")
            for _ in range(3):
                ledger.ask(study, spec)
            ledger.set_attempt(study, 1, 1)
            ledger.tell(study, 2, "COMPLETE", [0.5])
            studies[(ns, name)] = study
    server = ReportServer(ledger.resolve, SIGNER, max_body_bytes=MAX_BODY)
    base = server.start()
    reader = optuna.storages.RDBStorage(fresh_database)
    try:
        yield Ledgered(ledger, reader, base, studies)
    finally:
        server.stop()
        reader.engine.dispose()
        ledger.storage.engine.dispose()  # type: ignore[attr-defined]
        postgres_server.drop_database(db)


def path(ns: str, study: str, number: int | str, action: str) -> str:
    return f"/v1/namespaces/{ns}/studies/{study}/trials/{number}/{action}"


def send(
    base: str,
    url_path: str,
    body: bytes | None,
    *,
    token: str | None,
    content_type: str | None = "application/json",
    method: str = "POST",
    auth_scheme: str = "Bearer",
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(base + url_path, data=body, method=method)
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"{auth_scheme} {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=WAIT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


REPORT = json.dumps({"step": 1, "value": 0.5}).encode()
GOOD0 = SIGNER.issue("ns1", "a", 0, 0)
MAC0 = GOOD0.split(".")[1]
JSON = "application/json"


@dataclass(frozen=True)
class Case:
    """One hostile request and its precise answer (status and a piece of the error text)."""

    id: str
    expected: int
    text: str
    path: str = path("ns1", "a", 0, "report")
    body: bytes | None = REPORT
    token: str | None = GOOD0
    content_type: str | None = JSON
    method: str = "POST"
    scheme: str = "Bearer"


BAD_TOKEN = "not valid for this trial"
CASES = [
    # --- tokens ---
    Case("no-token", 401, "missing bearer token", token=None),
    Case("basic-scheme", 401, "missing bearer token", scheme="Basic"),
    Case("forged-other-key", 401, BAD_TOKEN, token=OTHER_SIGNER.issue("ns1", "a", 0, 0)),
    Case("forged-random-mac", 401, BAD_TOKEN, token="0." + "ab" * 32),
    Case("truncated-mac", 401, BAD_TOKEN, token=GOOD0[:-1]),
    Case("uppercase-mac-alias", 401, BAD_TOKEN, token="0." + MAC0.upper()),
    Case("leading-zero-attempt-alias", 401, BAD_TOKEN, token="0" + GOOD0),
    Case("attempt-forged-up", 401, BAD_TOKEN, token="1." + MAC0),
    Case("cross-trial", 401, BAD_TOKEN, token=SIGNER.issue("ns1", "a", 1, 0)),
    Case("cross-study", 401, BAD_TOKEN, path=path("ns1", "b", 0, "report")),
    Case("cross-namespace", 401, BAD_TOKEN, path=path("ns2", "a", 0, "report")),
    Case(
        "replayed-old-attempt",
        403,
        "superseded attempt",
        path=path("ns1", "a", 1, "report"),
        token=SIGNER.issue("ns1", "a", 1, 0),
    ),
    Case("future-attempt", 403, "superseded attempt", token=SIGNER.issue("ns1", "a", 0, 5)),
    Case(
        "finished-trial-report",
        409,
        "already COMPLETE",
        path=path("ns1", "a", 2, "report"),
        token=SIGNER.issue("ns1", "a", 2, 0),
    ),
    Case(
        "finished-trial-other-values",
        409,
        "different values",
        path=path("ns1", "a", 2, "complete"),
        body=b'{"values": [0.9]}',
        token=SIGNER.issue("ns1", "a", 2, 0),
    ),
    Case(
        "finished-trial-fail",
        409,
        "already COMPLETE",
        path=path("ns1", "a", 2, "fail"),
        body=b'{"reason": "late"}',
        token=SIGNER.issue("ns1", "a", 2, 0),
    ),
    Case(
        "unknown-trial",
        404,
        "trial 7 not found",
        path=path("ns1", "a", 7, "report"),
        token=SIGNER.issue("ns1", "a", 7, 0),
    ),
    Case(
        "unknown-study",
        404,
        "not found",
        path=path("ns1", "zzz", 0, "report"),
        token=SIGNER.issue("ns1", "zzz", 0, 0),
    ),
    # --- paths and methods ---
    Case("unknown-action", 404, "unknown action", path=path("ns1", "a", 0, "delete")),
    Case("negative-trial", 404, "non-negative integer", path=path("ns1", "a", "-1", "report")),
    Case("padded-trial-number", 404, "non-negative", path=path("ns1", "a", "00", "report")),
    Case("get-method", 405, "", body=None, content_type=None, method="GET"),
    Case("put-method", 405, "", method="PUT"),
    # --- bodies and content types ---
    Case("text-plain", 415, "content type must be application/json", content_type="text/plain"),
    Case(
        "form-encoded",
        415,
        "content type",
        body=b"step=1&value=0.5",
        content_type="application/x-www-form-urlencoded",
    ),
    Case("no-content-type", 415, "content type", content_type=None),
    Case("malformed-json", 400, "malformed JSON", body=b'{"step": 1, "value": '),
    Case("not-utf8", 400, "not UTF-8", body=b'{"step": 1, "value": "\xff"}'),
    Case("deeply-nested", 413, "larger than", body=b"[" * 10_000 + b"]" * 10_000),
    Case("nested-within-limit", 400, "nested too deeply", body=b"[" * 5000 + b"]" * 5000),
    Case(
        "oversized",
        413,
        "larger than",
        body=json.dumps({"step": 1, "value": 0.5, "pad": "x" * (MAX_BODY + 1)}).encode(),
    ),
    Case("array-body", 422, "must be a JSON object", body=b"[1, 2]"),
    Case("empty-body", 400, "malformed JSON", body=b""),
    Case("nan-value", 422, "finite", body=b'{"step": 1, "value": NaN}'),
    Case("infinity-value", 422, "finite", body=b'{"step": 1, "value": Infinity}'),
    Case("huge-number", 422, "finite", body=b'{"step": 1, "value": 1e999}'),
    Case("string-value", 422, "must be a number", body=b'{"step": 1, "value": "0.5"}'),
    Case("bool-step", 422, "step must be an integer", body=b'{"step": true, "value": 0.5}'),
    Case("float-step", 422, "step must be an integer", body=b'{"step": 1.5, "value": 0.5}'),
    Case("negative-step", 422, "step must be in", body=b'{"step": -1, "value": 0.5}'),
    Case("step-overflow", 422, "step must be in", body=b'{"step": 2147483648, "value": 0.5}'),
    Case("missing-value", 422, "value is required", body=b'{"step": 1}'),
    Case(
        "complete-wrong-arity",
        422,
        "objectives",
        path=path("ns1", "a", 0, "complete"),
        body=b'{"values": [1.0, 2.0]}',
    ),
    Case(
        "complete-empty",
        422,
        "non-empty list",
        path=path("ns1", "a", 0, "complete"),
        body=b'{"values": []}',
    ),
    Case(
        "complete-scalar",
        422,
        "non-empty list",
        path=path("ns1", "a", 0, "complete"),
        body=b'{"values": 1.0}',
    ),
    Case(
        "fail-blank-reason",
        422,
        "reason must be",
        path=path("ns1", "a", 0, "fail"),
        body=b'{"reason": "   "}',
    ),
    Case(
        "fail-reason-object",
        422,
        "reason must be",
        path=path("ns1", "a", 0, "fail"),
        body=b'{"reason": {"x": 1}}',
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_request_answers_precisely_and_leaves_the_ledger_unchanged(
    ledgered: Ledgered, case: Case
) -> None:
    before = ledgered.fingerprint()
    status, answer = send(
        ledgered.base,
        case.path,
        case.body,
        token=case.token,
        content_type=case.content_type,
        method=case.method,
        auth_scheme=case.scheme,
    )
    assert status == case.expected, answer
    assert case.text in str(answer.get("error", "")), answer
    assert ledgered.fingerprint() == before
    # The key never leaks into an answer, whatever the input.
    assert KEY.decode() not in json.dumps(answer)


def test_the_good_request_beside_the_abuse_still_works(ledgered: Ledgered) -> None:
    """Guards the cases above: the same request with the right token is accepted."""
    status, answer = send(ledgered.base, path("ns1", "a", 0, "report"), REPORT, token=GOOD0)
    assert (status, answer) == (200, {"prune": False})
    status, _ = send(
        ledgered.base, path("ns1", "a", 1, "report"), REPORT, token=SIGNER.issue("ns1", "a", 1, 1)
    )
    assert status == 200
    trials = ledgered.studies[("ns1", "a")].get_trials(deepcopy=False)
    assert trials[0].intermediate_values == {1: 0.5}
    assert trials[1].intermediate_values == {1: 0.5}


def test_a_tokens_mac_is_bound_to_every_path_field() -> None:
    """Pure check of the binding the HTTP cases rely on (no server)."""
    token = SIGNER.issue("ns1", "a", 0, 0)
    assert SIGNER.verify(token, "ns1", "a", 0) == 0
    for ns, study, number in [("ns2", "a", 0), ("ns1", "b", 0), ("ns1", "a", 1)]:
        assert SIGNER.verify(token, ns, study, number) is None
    # Field boundaries cannot be shifted: "ns1/a" + "b" vs "ns1" + "a/b" are refused names.
    with pytest.raises(ValueError, match="without '/'"):
        SIGNER.issue("ns1", "a/b", 0, 0)
    assert SIGNER.verify(token, "ns1/a", "b", 0) is None


# ---------------------------------------------------------------------------------------------
# A bounded flood


FLOOD_BAD = 6000 if SOAK else 2000
FLOOD_GOOD = 400 if SOAK else 150
FLOOD_CONCURRENCY = 32


def _bad_request(i: int) -> tuple[str, bytes, dict[str, str], int]:
    kind = i % 5
    headers = {"Content-Type": "application/json"}
    if kind == 0:  # forged token
        headers["Authorization"] = f"Bearer 0.{i:064x}"[:74]
        return path("ns1", "a", 0, "report"), REPORT, headers, 401
    if kind == 1:  # cross-study token
        headers["Authorization"] = f"Bearer {SIGNER.issue('ns1', 'b', 0, 0)}"
        return path("ns1", "a", 0, "report"), REPORT, headers, 401
    if kind == 2:  # malformed body with a valid token (passes auth, fails parsing)
        headers["Authorization"] = f"Bearer {GOOD0}"
        return path("ns1", "a", 0, "report"), b'{"step": 1, "value"', headers, 400
    if kind == 3:  # oversized
        headers["Authorization"] = f"Bearer {GOOD0}"
        return path("ns1", "a", 0, "report"), b"x" * (MAX_BODY + 10), headers, 413
    headers["Authorization"] = f"Bearer {SIGNER.issue('ns1', 'a', 1, 0)}"  # replayed attempt
    return path("ns1", "a", 1, "report"), REPORT, headers, 403


async def _flood(base: str) -> tuple[list[tuple[int, int]], list[float], list[int]]:
    """Bad and good requests interleaved, FLOOD_CONCURRENCY at a time.

    The caps (per request and for the flood) are sized for a loaded machine: the flood's
    speed is printed as a figure, never asserted.
    """
    bad_results: list[tuple[int, int]] = []  # (expected, got)
    good_latencies: list[float] = []
    good_codes: list[int] = []
    sem = asyncio.Semaphore(FLOOD_CONCURRENCY)
    good_token = SIGNER.issue("ns2", "b", 0, 0)
    timeout = aiohttp.ClientTimeout(total=WAIT_SECONDS)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def bad(i: int) -> None:
            url_path, body, headers, expected = _bad_request(i)
            async with sem, session.post(base + url_path, data=body, headers=headers) as r:
                await r.read()
                bad_results.append((expected, r.status))

        async def good(step: int) -> None:
            body = json.dumps({"step": step, "value": step / 1000}).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {good_token}"}
            async with sem:
                start = time.perf_counter()
                async with session.post(
                    base + path("ns2", "b", 0, "report"), data=body, headers=headers
                ) as r:
                    await r.read()
                    good_latencies.append(time.perf_counter() - start)
                    good_codes.append(r.status)

        tasks = [bad(i) for i in range(FLOOD_BAD)]
        every = max(1, FLOOD_BAD // FLOOD_GOOD)
        for step in range(FLOOD_GOOD):
            tasks.insert(step * (every + 1), good(step))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=2 * WAIT_SECONDS)
        except TimeoutError:
            done = len(bad_results) + len(good_codes)
            raise AssertionError(
                f"the flood did not finish within {2 * WAIT_SECONDS:.0f} s: "
                f"{done} of {FLOOD_BAD + FLOOD_GOOD} requests answered"
            ) from None
    return bad_results, good_latencies, good_codes


def test_flood_is_rejected_precisely_while_good_reports_land(ledgered: Ledgered) -> None:
    others_before = _fingerprint_without(ledgered, ("ns2", "b"))
    started = time.perf_counter()
    bad_results, latencies, codes = asyncio.run(_flood(ledgered.base))
    elapsed = time.perf_counter() - started

    wrong = [(e, g) for e, g in bad_results if e != g]
    assert len(bad_results) == FLOOD_BAD
    assert not wrong, f"{len(wrong)} bad requests answered unexpectedly, e.g. {wrong[:5]}"
    assert codes == [200] * FLOOD_GOOD
    # Every good report landed exactly once; nothing else in the ledger moved.
    trial = ledgered.studies[("ns2", "b")].get_trials(deepcopy=False)[0]
    assert trial.intermediate_values == {s: s / 1000 for s in range(FLOOD_GOOD)}
    assert _fingerprint_without(ledgered, ("ns2", "b")) == others_before

    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"\nreport API flood: {FLOOD_BAD} bad + {FLOOD_GOOD} good requests in {elapsed:.2f}s "
        f"({(FLOOD_BAD + FLOOD_GOOD) / elapsed:.0f} req/s, concurrency {FLOOD_CONCURRENCY}); "
        f"good-request latency p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
        f"max={ordered[-1] * 1000:.1f} ms"
    )


def _fingerprint_without(ledgered: Ledgered, skip: tuple[str, str]) -> str:
    data = json.loads(ledgered.fingerprint())
    name_prefix = f"{skip[0]}.{skip[1]}."
    return json.dumps([s for s in data if not s["study"].startswith(name_prefix)], sort_keys=True)
