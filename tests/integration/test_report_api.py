"""The report API over real HTTP against a real Optuna RDB storage, driven by the real SDK.

Every test runs on each of ``STORAGE_BACKENDS``: SQLite (a file under tmp) and the session's
real PostgreSQL (``postgres_url`` from tests/conftest.py).

No outcome depends on the machine's speed: the SDK's sleeps are injected, a request that must
still be in flight is held by an Event only the test sets, and HTTP timeouts are sized for a
loaded machine (``WAIT_SECONDS``), since they only matter when a test is failing anyway.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from kubetune.reporting import (
    ATTEMPT_ATTR,
    FAIL_REASON_ATTR,
    HEARTBEAT_ATTR,
    HEARTBEAT_WRITE_SECONDS,
    MAX_REASON_CHARS,
    ReportServer,
)
from kubetune.tokens import TokenSigner
from kubetune.trial import ReportError, TrialContext
from support.hold import WAIT_SECONDS

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: "sqlite", or the name of a fixture returning an Optuna storage URL.
STORAGE_BACKENDS = ["sqlite", "postgres_url"]

NS = "team-a"
KEY = b"report-api-test-key-0123456789"
SIGNER = TokenSigner(KEY)
NOW = 1_700_000_000.5
_names = (f"study-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())


class Studies:
    """The resolver: (namespace, study) -> optuna.Study, filled by each test."""

    def __init__(self) -> None:
        self.by_name: dict[tuple[str, str], optuna.Study] = {}
        self.events: list[tuple[str, str, str, int | None, dict[str, Any]]] = []

    def __call__(self, namespace: str, study: str) -> optuna.Study | None:
        return self.by_name.get((namespace, study))

    def on_event(
        self, kind: str, namespace: str, study: str, number: int | None, **fields: Any
    ) -> None:
        self.events.append((kind, namespace, study, number, fields))

    def events_for(self, study: str, kind: str) -> list[dict[str, Any]]:
        return [f for k, _, s, _, f in self.events if s == study and k == kind]


@pytest.fixture(scope="module", params=STORAGE_BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'optuna.db'}"
        return optuna.storages.RDBStorage(url)
    # pre-ping: after a database restart, pooled connections are dead; test before use.
    url = request.getfixturevalue(request.param)
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


@pytest.fixture(scope="module")
def studies() -> Studies:
    return Studies()


@pytest.fixture(scope="module")
def server(studies: Studies) -> Iterator[str]:
    srv = ReportServer(studies, SIGNER, clock=lambda: NOW, on_event=studies.on_event)
    yield srv.start()
    srv.stop()


def new_study(
    storage: Any,
    studies: Studies,
    *,
    pruner: optuna.pruners.BasePruner | None = None,
    directions: tuple[str, ...] = ("maximize",),
) -> optuna.Study:
    name = next(_names)
    study = optuna.create_study(
        storage=storage,
        study_name=f"{NS}.{name}",  # the operator maps k8s names to Optuna names
        directions=list(directions),
        pruner=pruner or optuna.pruners.NopPruner(),
    )
    studies.by_name[(NS, name)] = study
    return study


def k8s_name(study: optuna.Study) -> str:
    return study.study_name.removeprefix(f"{NS}.")


def sdk(
    base_url: str, study: optuna.Study, number: int, attempt: int = 0, **kw: Any
) -> TrialContext:
    name = k8s_name(study)
    env = {
        "KUBETUNE_REPORT_URL": base_url,
        "KUBETUNE_TRIAL_TOKEN": SIGNER.issue(NS, name, number, attempt),
        "KUBETUNE_NAMESPACE": NS,
        "KUBETUNE_STUDY": name,
        "KUBETUNE_TRIAL_NUMBER": str(number),
        "KUBETUNE_PARAMS": "{}",
    }
    kw.setdefault("sleep", lambda _: None)
    kw.setdefault("max_attempts", 2)
    kw.setdefault("timeout", WAIT_SECONDS)  # a slow answer is not a lost one
    return TrialContext(env, **kw)


def post(
    url: str,
    body: bytes | str | None = None,
    *,
    token: str | None = None,
    content_type: str | None = "application/json",
    method: str = "POST",
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (extra_headers or {}).items():
        request.add_header(key, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=WAIT_SECONDS) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def trial_url(base: str, study: str, number: int | str, action: str, ns: str = NS) -> str:
    return f"{base}/v1/namespaces/{ns}/studies/{study}/trials/{number}/{action}"


def snapshot(study: optuna.Study, number: int) -> tuple[Any, ...]:
    t = study.get_trials(deepcopy=True)[number]
    return t.state, t.values, dict(t.intermediate_values), dict(t.user_attrs)


# ---------------------------------------------------------------------------------------------
# Pruning end to end


def _run_trial(study: optuna.Study, base: str, values: list[float]) -> tuple[int, list[bool]]:
    trial = study.ask()
    client = sdk(base, study, trial.number)
    answers = []
    for step, value in enumerate(values):
        answers.append(client.report(value, step))
        assert client.should_prune() is answers[-1]
        if answers[-1]:
            client.pruned()
            return trial.number, answers
    client.complete(values[-1])
    return trial.number, answers


@pytest.mark.parametrize(
    "make_pruner",
    [
        lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=2, min_early_stopping_rate=0
        ),
    ],
    ids=["median", "successive-halving"],
)
def test_pruning_decision_reaches_the_sdk(
    storage: Any, studies: Studies, server: str, make_pruner: Callable[[], Any]
) -> None:
    study = new_study(storage, studies, pruner=make_pruner())
    _run_trial(study, server, [0.8, 0.9, 0.9])
    _run_trial(study, server, [0.85, 0.95, 0.95])
    bad, bad_answers = _run_trial(study, server, [0.1, 0.1, 0.1])
    good, good_answers = _run_trial(study, server, [0.99, 0.99, 0.99])

    assert bad_answers[-1] is True and len(bad_answers) < 3
    assert not any(good_answers)
    trials = study.get_trials()
    assert trials[bad].state == TrialState.PRUNED
    assert trials[bad].value == 0.1  # Optuna's rule: a pruned trial keeps its last value
    assert trials[good].state == TrialState.COMPLETE and trials[good].value == 0.99
    name = k8s_name(study)
    assert studies.events_for(name, "trial_finished").count({"state": "PRUNED"}) == 1
    assert studies.events_for(name, "prune_advised") == [{"step": len(bad_answers) - 1}]


# ---------------------------------------------------------------------------------------------
# Tokens


TOKEN_CASES = {
    "missing": 401,
    "not-bearer": 401,
    "forged": 401,
    "other-key": 401,
    "cross-trial": 401,
    "cross-study": 401,
    "cross-namespace": 401,
    "old-attempt": 403,
    "future-attempt": 403,
}
# Every case on the two writing routes; the shared auth path once more on the others.
TOKEN_MATRIX = [
    (case, status, action)
    for case, status in TOKEN_CASES.items()
    for action in ("report", "complete")
] + [
    (case, TOKEN_CASES[case], action)
    for case in ("forged", "old-attempt")
    for action in ("fail", "prune", "heartbeat")
]


@pytest.mark.parametrize(("case", "expected", "action"), TOKEN_MATRIX)
def test_bad_tokens_are_refused_and_change_nothing(
    storage: Any, studies: Studies, server: str, *, case: str, expected: int, action: str
) -> None:
    study = new_study(storage, studies)
    other = new_study(storage, studies)
    other.ask()
    study.ask()
    target = study.ask()
    name = k8s_name(study)
    study._storage.set_trial_user_attr(target._trial_id, ATTEMPT_ATTR, 1)
    headers: dict[str, str] = {}
    token: str | None = {
        "missing": None,
        "not-bearer": None,
        "forged": "1." + "0" * 64,
        "other-key": TokenSigner(b"another-key-of-enough-bytes").issue(NS, name, 1, 1),
        "cross-trial": SIGNER.issue(NS, name, 0, 1),
        "cross-study": SIGNER.issue(NS, k8s_name(other), 1, 1),
        "cross-namespace": SIGNER.issue("team-b", name, 1, 1),
        "old-attempt": SIGNER.issue(NS, name, 1, 0),
        "future-attempt": SIGNER.issue(NS, name, 1, 2),
    }[case]
    if case == "not-bearer":
        headers["Authorization"] = "Basic " + SIGNER.issue(NS, name, 1, 1)
    body = {
        "report": {"step": 0, "value": 1.0},
        "complete": {"values": [1.0]},
        "fail": {"reason": "x"},
        "prune": {},
        "heartbeat": {},
    }[action]
    before = snapshot(study, 1), snapshot(study, 0), snapshot(other, 0)

    status, answer, _ = post(
        trial_url(server, name, 1, action), json.dumps(body), token=token, extra_headers=headers
    )

    assert (status, set(answer)) == (expected, {"error"})
    assert (snapshot(study, 1), snapshot(study, 0), snapshot(other, 0)) == before
    # The right token for the current attempt still works afterwards.
    good = SIGNER.issue(NS, name, 1, 1)
    assert post(trial_url(server, name, 1, action), json.dumps(body), token=good)[0] == 200


def test_unauthenticated_requests_never_learn_whether_a_study_exists(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    study.ask()
    forged = "0." + "f" * 64
    known = post(trial_url(server, k8s_name(study), 0, "heartbeat"), "{}", token=forged)
    unknown = post(trial_url(server, "no-such-study", 0, "heartbeat"), "{}", token=forged)
    assert known[0] == unknown[0] == 401
    assert known[1] == unknown[1]


# ---------------------------------------------------------------------------------------------
# Idempotency and finished trials


def test_duplicate_reports_are_idempotent_and_a_new_value_replaces_the_step(
    storage: Any, studies: Studies, server: str
) -> None:
    """The latest report of a step wins: a resumed Job's new pod trains again from its start
    under the same attempt, and a 409 there would fail the trial (issue 16)."""
    study = new_study(storage, studies)
    number = study.ask().number
    client = sdk(server, study, number)

    assert client.report(0.5, 0) is False
    assert client.report(0.5, 0) is False
    assert snapshot(study, number)[2] == {0: 0.5}
    assert client.report(0.6, 0) is False
    assert snapshot(study, number)[2] == {0: 0.6}


def test_a_retried_attempt_reports_its_steps_again_with_other_values(
    storage: Any, studies: Studies, server: str
) -> None:
    """Issue 16 item 1: after an eviction, attempt 1 reports steps 0..k again with values that
    differ (a GPU's nondeterministic kernels): accepted, step by step they replace attempt 0's,
    and the trial completes with the new attempt's curve."""
    study = new_study(storage, studies)
    number = study.ask().number
    first = sdk(server, study, number, attempt=0)
    for step, value in enumerate((0.1, 0.2, 0.3, 0.4)):
        first.report(value, step)
    study._storage.set_trial_user_attr(study.trials[number]._trial_id, ATTEMPT_ATTR, 1)
    retry = sdk(server, study, number, attempt=1)

    assert retry.report(0.15, 0) is False
    # Until it gets there, later steps keep the earlier attempt's values.
    assert snapshot(study, number)[2] == {0: 0.15, 1: 0.2, 2: 0.3, 3: 0.4}
    for step, value in enumerate((0.25, 0.35, 0.45), start=1):
        retry.report(value, step)
    with pytest.raises(ReportError) as stale:
        first.report(0.5, 4)  # the evicted pod, back from the dead
    assert stale.value.status == 403
    retry.complete(0.45)
    state, values, curve, _ = snapshot(study, number)
    assert (state, values, curve) == (
        TrialState.COMPLETE,
        [0.45],
        {0: 0.15, 1: 0.25, 2: 0.35, 3: 0.45},
    )


def test_the_pruner_judges_the_retried_attempt_on_its_own_curve(
    storage: Any, studies: Studies, server: str
) -> None:
    """Attempt 0 fell below the threshold at step 1; attempt 1 reporting step 0 is judged on
    the curve up to step 0, not on attempt 0's step 1 (which it has not reached)."""
    study = new_study(storage, studies, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    number = study.ask().number
    first = sdk(server, study, number, attempt=0)
    assert first.report(0.9, 0) is False
    assert first.report(0.1, 1) is True
    study._storage.set_trial_user_attr(study.trials[number]._trial_id, ATTEMPT_ATTR, 1)
    retry = sdk(server, study, number, attempt=1)
    assert retry.report(0.9, 0) is False
    assert retry.report(0.8, 1) is False
    assert retry.report(0.2, 2) is True
    assert snapshot(study, number)[2] == {0: 0.9, 1: 0.8, 2: 0.2}


def test_out_of_order_steps_and_reports_after_a_prune_advice_have_defined_answers(
    storage: Any, studies: Studies, server: str
) -> None:
    """Bad input (docs/architecture.md): steps out of order are stored and each is judged on
    the curve up to it; reports after ``prune: true`` are judged again while the trial is
    RUNNING; once the trainer confirmed the prune, a report is 409 and changes nothing."""
    study = new_study(storage, studies, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    number = study.ask().number
    client = sdk(server, study, number)
    assert client.report(0.1, 5) is True
    assert client.report(0.9, 3) is False  # judged on steps <= 3: fine there
    assert client.report(0.2, 6) is True
    assert client.report(0.3, 7) is True  # still RUNNING: answered, stored
    client.pruned()
    with pytest.raises(ReportError) as refused:
        client.report(0.4, 8)
    assert refused.value.status == 409
    state, _, curve, _ = snapshot(study, number)
    assert (state, curve) == (TrialState.PRUNED, {3: 0.9, 5: 0.1, 6: 0.2, 7: 0.3})


def test_reports_and_heartbeats_are_signs_of_life_written_at_most_every_few_seconds(
    storage: Any, studies: Studies
) -> None:
    """``kubetune:heartbeat`` moves on a report too (the operator's heartbeat timeout reads
    it), and a chatty trainer writes it once per ``HEARTBEAT_WRITE_SECONDS``, not per call."""
    clock = [NOW]
    srv = ReportServer(studies, SIGNER, clock=lambda: clock[0])
    base = srv.start()
    try:
        study = new_study(storage, studies)
        number = study.ask().number
        client = sdk(base, study, number)
        client.heartbeat()
        assert snapshot(study, number)[3][HEARTBEAT_ATTR] == NOW
        clock[0] = NOW + HEARTBEAT_WRITE_SECONDS / 2
        client.heartbeat()
        client.report(0.1, 0)
        assert snapshot(study, number)[3][HEARTBEAT_ATTR] == NOW  # throttled
        clock[0] = NOW + HEARTBEAT_WRITE_SECONDS
        client.report(0.2, 1)
        assert snapshot(study, number)[3][HEARTBEAT_ATTR] == NOW + HEARTBEAT_WRITE_SECONDS
    finally:
        srv.stop()


def test_complete_retry_is_ok_and_a_different_result_conflicts(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    client = sdk(server, study, number)
    client.report(0.4, 0)

    client.complete(0.9)
    client.complete([0.9])  # the lost-response retry
    after = snapshot(study, number)
    assert after[:2] == (TrialState.COMPLETE, [0.9])
    for call, status in [
        (lambda: client.complete(0.8), 409),
        (lambda: client.report(0.4, 0), 409),
        (lambda: client.report(0.5, 1), 409),
        (lambda: client.fail("late"), 409),
        (client.pruned, 409),
        (client.heartbeat, 409),
    ]:
        with pytest.raises(ReportError) as refused:
            call()
        assert refused.value.status == status
    assert snapshot(study, number) == after
    finished = studies.events_for(k8s_name(study), "trial_finished")
    assert finished == [{"state": "COMPLETE"}]


def test_complete_needs_one_value_per_objective(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies, directions=("maximize", "minimize"))
    number = study.ask().number
    client = sdk(server, study, number)
    # Multi-objective: Optuna cannot prune, the curve is still kept.
    assert client.report(0.3, 0) is False
    for wrong in ([1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ReportError) as refused:
            client.complete(wrong)
        assert refused.value.status == 422
        assert "2 objectives" in str(refused.value)
    client.complete([0.7, 12.0])
    state, values, intermediate, _ = snapshot(study, number)
    assert (state, values, intermediate) == (TrialState.COMPLETE, [0.7, 12.0], {0: 0.3})


def test_fail_stores_the_reason_and_retries_are_idempotent(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    url = trial_url(server, k8s_name(study), number, "fail")
    token = SIGNER.issue(NS, k8s_name(study), number, 0)
    long_reason = "x" * (MAX_REASON_CHARS + 50)

    assert post(url, json.dumps({"reason": long_reason}), token=token)[:2] == (
        200,
        {"state": "FAIL"},
    )
    assert post(url, json.dumps({"reason": long_reason}), token=token)[0] == 200
    assert post(url, json.dumps({"reason": "other"}), token=token)[0] == 409
    state, _, _, attrs = snapshot(study, number)
    assert state == TrialState.FAIL
    assert attrs[FAIL_REASON_ATTR] == long_reason[:MAX_REASON_CHARS]


def test_prune_tells_pruned_with_the_last_value_and_is_idempotent(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    client = sdk(server, study, number)
    client.report(0.2, 0)
    client.report(0.3, 4)
    client.pruned()
    client.pruned()
    assert snapshot(study, number)[:2] == (TrialState.PRUNED, [0.3])
    with pytest.raises(ReportError) as refused:
        client.complete(1.0)
    assert refused.value.status == 409


def test_heartbeat_records_the_injected_clock(storage: Any, studies: Studies, server: str) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    sdk(server, study, number).heartbeat()
    assert snapshot(study, number)[3][HEARTBEAT_ATTR] == NOW
    assert snapshot(study, number)[0] == TrialState.RUNNING


def test_request_events_carry_action_and_code(storage: Any, studies: Studies, server: str) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    client = sdk(server, study, number)
    client.report(0.1, 0)
    client.pruned()
    with pytest.raises(ReportError):
        client.report(0.2, 1)  # after the trial was pruned
    assert studies.events_for(k8s_name(study), "request") == [
        {"action": "report", "code": 200},
        {"action": "prune", "code": 200},
        {"action": "report", "code": 409},
    ]


# ---------------------------------------------------------------------------------------------
# Bad input


BAD_INPUTS = [
    # (id, action, body, content type, status, words in the error)
    ("malformed-json", "report", '{"step": 0,', "application/json", 400, "malformed JSON"),
    ("not-utf8", "report", b"\xff\xfe", "application/json", 400, "UTF-8"),
    ("deep-json", "report", "[" * 5000 + "]" * 5000, "application/json", 400, "JSON"),
    ("text-plain", "report", '{"step": 0, "value": 1}', "text/plain", 415, "application/json"),
    ("form", "complete", "values=1", "application/x-www-form-urlencoded", 415, "content type"),
    ("no-content-type", "report", '{"step": 0, "value": 1}', None, 415, "content type"),
    ("too-big", "fail", json.dumps({"reason": "x" * 20000}), "application/json", 413, "larger"),
    ("nan", "report", '{"step": 0, "value": NaN}', "application/json", 422, "finite"),
    ("inf", "report", '{"step": 0, "value": Infinity}', "application/json", 422, "finite"),
    ("overflow", "report", '{"step": 0, "value": 1e999}', "application/json", 422, "finite"),
    ("neg-step", "report", '{"step": -1, "value": 1}', "application/json", 422, "step"),
    ("float-step", "report", '{"step": 1.0, "value": 1}', "application/json", 422, "step"),
    ("str-step", "report", '{"step": "1", "value": 1}', "application/json", 422, "step"),
    ("bool-step", "report", '{"step": true, "value": 1}', "application/json", 422, "step"),
    ("huge-step", "report", '{"step": 2147483648, "value": 1}', "application/json", 422, "step"),
    ("no-step", "report", '{"value": 1}', "application/json", 422, "step is required"),
    ("no-value", "report", '{"step": 1}', "application/json", 422, "value is required"),
    ("str-value", "report", '{"step": 1, "value": "1"}', "application/json", 422, "value"),
    ("list-body", "report", "[0, 1]", "application/json", 422, "JSON object"),
    ("empty-report", "report", "", "application/json", 400, "malformed JSON"),
    ("no-values", "complete", "{}", "application/json", 422, "values is required"),
    ("empty-values", "complete", '{"values": []}', "application/json", 422, "non-empty"),
    ("nan-values", "complete", '{"values": [NaN]}', "application/json", 422, "values[0]"),
    ("scalar-values", "complete", '{"values": 1.0}', "application/json", 422, "list"),
    ("no-reason", "fail", "{}", "application/json", 422, "reason"),
    ("blank-reason", "fail", '{"reason": "  "}', "application/json", 422, "reason"),
]


@pytest.mark.parametrize(
    ("action", "body", "content_type", "status", "words"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_a_precise_answer_and_changes_nothing(
    storage: Any,
    studies: Studies,
    server: str,
    *,
    action: str,
    body: str | bytes,
    content_type: str | None,
    status: int,
    words: str,
) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    token = SIGNER.issue(NS, k8s_name(study), number, 0)
    before = snapshot(study, number)

    got, answer, _ = post(
        trial_url(server, k8s_name(study), number, action),
        body,
        token=token,
        content_type=content_type,
    )

    assert got == status
    assert words in answer["error"]
    assert snapshot(study, number) == before


def test_chunked_body_over_the_limit_is_refused(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    token = SIGNER.issue(NS, k8s_name(study), number, 0)
    chunks = iter([b'{"reason": "', b"x" * 10000, b"y" * 10000, b'"}'])
    status, answer, _ = post(
        trial_url(server, k8s_name(study), number, "fail"),
        chunks,  # type: ignore[arg-type]  # urllib sends an iterable chunked
        token=token,
        extra_headers={"Transfer-Encoding": "chunked"},
    )
    assert (status, snapshot(study, number)[0]) == (413, TrialState.RUNNING)
    assert "larger" in answer["error"]


def test_unknown_things_are_404_and_wrong_methods_405(
    storage: Any, studies: Studies, server: str
) -> None:
    study = new_study(storage, studies)
    study.ask()
    name = k8s_name(study)
    body = '{"step": 0, "value": 1}'
    cases = [
        (trial_url(server, "ghost", 0, "report"), SIGNER.issue(NS, "ghost", 0, 0), "study"),
        (trial_url(server, name, 5, "report"), SIGNER.issue(NS, name, 5, 0), "trial 5"),
        (trial_url(server, name, "-1", "report"), SIGNER.issue(NS, name, 0, 0), "trial number"),
        (trial_url(server, name, "01", "report"), SIGNER.issue(NS, name, 1, 0), "trial number"),
        (trial_url(server, name, 0, "explode"), SIGNER.issue(NS, name, 0, 0), "unknown action"),
    ]
    for url, token, words in cases:
        status, answer, _ = post(url, body, token=token)
        assert (status, words in answer["error"]) == (404, True), url
    status, answer, headers = post(
        trial_url(server, name, 0, "report"), None, token=SIGNER.issue(NS, name, 0, 0), method="GET"
    )
    assert status == 405 and "POST" in headers["Allow"] and "error" in answer
    assert post(f"{server}/v1/nothing", body)[0] == 404


# ---------------------------------------------------------------------------------------------
# Faults


@pytest.fixture
def outage(request: pytest.FixtureRequest, tmp_path: Path, storage: Any) -> Any:
    """(storage, break, heal): a ledger that can really go down and come back."""
    if request.node.callspec.params["storage"] == "sqlite":
        ledger = tmp_path / "outage.db"
        own = optuna.storages.RDBStorage(f"sqlite:///{ledger}")
        optuna.create_study(storage=own, study_name="warm-up")  # create the schema now
        healthy: list[bytes] = []

        def break_ledger() -> None:
            healthy.append(ledger.read_bytes())
            with ledger.open("r+b") as handle:  # overwrite in place: open connections see it
                handle.write(b"not a database" * 1024)

        def heal_ledger() -> None:
            with ledger.open("r+b") as handle:
                handle.write(healthy.pop())

        return own, break_ledger, heal_ledger
    server = request.getfixturevalue("postgres_server")
    return storage, lambda: server.stop("immediate"), server.start


def test_storage_outage_answers_503_and_the_sdk_rides_it_out(
    outage: Any, studies: Studies, server: str
) -> None:
    ledger, break_ledger, heal_ledger = outage
    study = new_study(ledger, studies)
    number = study.ask().number
    url = trial_url(server, k8s_name(study), number, "report")
    token = SIGNER.issue(NS, k8s_name(study), number, 0)

    delays: list[float] = []
    break_ledger()
    try:
        status, answer, headers = post(url, '{"step": 0, "value": 1.5}', token=token)
        assert (status, answer["error"], headers["Retry-After"]) == (
            503,
            "trial ledger unavailable, retry later",
            "5",
        )

        def sleep(seconds: float) -> None:
            delays.append(seconds)
            if len(delays) == 1:
                heal_ledger()

        client = sdk(server, study, number, sleep=sleep, max_attempts=3)
        assert client.report(1.5, 0) is False
    finally:
        if not delays:
            heal_ledger()
    assert delays == [5.0]  # the SDK honoured Retry-After, then the retry landed
    assert snapshot(study, number)[2] == {0: 1.5}


def test_sdk_retries_across_a_server_restart(storage: Any, tmp_path: Path) -> None:
    studies = Studies()
    study = new_study(storage, studies)
    number = study.ask().number
    srv = ReportServer(studies, SIGNER)
    base = srv.start()
    port = srv.port
    srv.stop()  # the operator went away

    attempts_while_down: list[float] = []

    def sleep(seconds: float) -> None:
        attempts_while_down.append(seconds)
        if len(attempts_while_down) == 2:
            assert srv.start() == base  # back on the same port a moment later

    client = sdk(base, study, number, sleep=sleep, max_attempts=5, backoff=0.25)
    try:
        assert client.report(0.7, 3) is False
        client.complete(0.8)
    finally:
        srv.stop()
    assert attempts_while_down == [0.25, 0.5]
    assert srv.port == port
    assert snapshot(study, number)[:3] == (TrialState.COMPLETE, [0.8], {3: 0.7})


def test_sdk_gives_up_after_bounded_retries(storage: Any, studies: Studies) -> None:
    study = new_study(storage, studies)
    number = study.ask().number
    srv = ReportServer(studies, SIGNER)
    base = srv.start()
    srv.stop()
    warnings: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            warnings.append(text)

        def flush(self) -> None:
            pass

    delays: list[float] = []
    client = sdk(
        base,
        study,
        number,
        sleep=delays.append,
        max_attempts=4,
        max_backoff=1.0,
        stderr=Sink(),
    )
    assert client.report(0.5, 0) is False  # best effort: training goes on
    assert any("step 0 was not recorded" in w for w in warnings)
    with pytest.raises(ReportError) as failed:
        client.complete(0.5)
    assert failed.value.status is None and "after 4 attempts" in str(failed.value)
    assert delays == [0.5, 1.0, 1.0] * 2
    assert snapshot(study, number)[:3] == (TrialState.RUNNING, None, {})


def test_blocking_ledger_calls_do_not_stall_other_requests(
    storage: Any, studies: Studies, server: str
) -> None:
    fast = new_study(storage, studies)
    fast_number = fast.ask().number
    entered, release = threading.Event(), threading.Event()

    def slow_resolver(namespace: str, name: str) -> optuna.Study | None:
        if name == "slow":
            entered.set()
            assert release.wait(timeout=WAIT_SECONDS), "the test never released the slow call"
            return None
        return studies(namespace, name)

    srv = ReportServer(slow_resolver, SIGNER)
    base = srv.start()
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(
            post(
                trial_url(base, "slow", 0, "heartbeat"), "{}", token=SIGNER.issue(NS, "slow", 0, 0)
            )[0]
        )
    )
    try:
        slow.start()
        assert entered.wait(timeout=WAIT_SECONDS), "the slow request never reached the ledger"
        # Served while "slow" is held: only this test releases it, so no race with the clock.
        status = sdk(base, fast, fast_number).report(0.5, 0)
        assert status is False and not results
    finally:
        release.set()
        slow.join()
        srv.stop()
    assert results == [404]
    assert snapshot(fast, fast_number)[2] == {0: 0.5}


def test_a_failing_event_hook_does_not_break_answers(storage: Any, studies: Studies) -> None:
    study = new_study(storage, studies)
    number = study.ask().number

    def broken_hook(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics are down")

    srv = ReportServer(studies, SIGNER, on_event=broken_hook)
    try:
        client = sdk(srv.start(), study, number)
        client.report(0.1, 0)
        client.complete(0.2)
    finally:
        srv.stop()
    assert snapshot(study, number)[:2] == (TrialState.COMPLETE, [0.2])


def test_report_racing_a_finish_answers_409_not_500(tmp_path: Path) -> None:
    """The running check and the write are separate transactions; a trial finished in between
    must answer like any finished trial (409), not with a server error."""
    import optuna

    from kubetune import report_rules

    storage = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(storage=storage, study_name="race")
    trial = study.ask()
    handle = report_rules.TrialHandle(study, trial.number, 0)
    study.tell(trial.number, 0.5)  # finished after the handle's state was read
    with pytest.raises(report_rules.Reply) as err:
        report_rules.report(handle, 0, 0.1, 0.0)
    assert err.value.status == 409
    assert study.trials[0].intermediate_values == {}
