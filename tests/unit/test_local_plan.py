"""Pure parts of the local runner: $(VAR) expansion, trial env and command, output tail."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune._local_plan import (
    expand_vars,
    normalise_storage_url,
    tail,
    trial_command,
    trial_env,
)

ENV = {"A": "1", "LR": "0.01"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--lr=$(LR)", "--lr=0.01"),
        ("$(A)$(A)", "11"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("cost $5", "cost $5"),
        ("$(A", "$(A"),
        ("end$", "end$"),
        ("$()", "$()"),
    ],
)
def test_expand_vars_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand_vars(text, ENV) == expected


@given(st.text(alphabet=st.sampled_from("$()AB x"), max_size=30))
def test_expand_vars_without_known_names_changes_only_escapes(text: str) -> None:
    out = expand_vars(text, {})
    assert out.replace("$", "") == text.replace("$", "")


def test_trial_env_has_the_contract_variables() -> None:
    base = {"PATH": "/bin", "KUBETUNE_TRIAL_TOKEN": "stale"}
    env, warnings = trial_env(
        base,
        {"lr": 0.01, "optimizer": "sgd", "batch-size": 64, "flag": True},
        namespace="local",
        study="s",
        number=7,
        report_url="http://127.0.0.1:9/",
        token="0.abc",
        container_env=[
            {"name": "DERIVED", "value": "lr=$(KUBETUNE_PARAM_LR)"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}},
            {"name": "EMPTY"},
        ],
        threads=2,
    )
    assert env["PATH"] == "/bin"
    assert env["KUBETUNE_PARAM_LR"] == "0.01"
    assert env["KUBETUNE_PARAM_OPTIMIZER"] == "sgd"
    assert env["KUBETUNE_PARAM_BATCH_SIZE"] == "64"
    assert env["KUBETUNE_PARAM_FLAG"] == "true"
    assert json.loads(env["KUBETUNE_PARAMS"])["batch-size"] == 64
    assert (env["KUBETUNE_NAMESPACE"], env["KUBETUNE_STUDY"]) == ("local", "s")
    assert (env["KUBETUNE_TRIAL_NUMBER"], env["KUBETUNE_TRIAL_ATTEMPT"]) == ("7", "0")
    assert env["KUBETUNE_TRIAL_TOKEN"] == "0.abc"
    assert env["DERIVED"] == "lr=0.01" and env["EMPTY"] == ""
    assert "SECRET" not in env and any("SECRET" in w for w in warnings)
    assert env["OMP_NUM_THREADS"] == "2"
    assert "KUBETUNE_TERMINATION_LOG" not in env


def test_termination_mode_env_drops_report_variables() -> None:
    env, _ = trial_env(
        {"KUBETUNE_REPORT_URL": "http://old", "OMP_NUM_THREADS": "8"},
        {},
        namespace="n",
        study="s",
        number=0,
        termination_log="/tmp/t",
        threads=1,
    )
    assert "KUBETUNE_REPORT_URL" not in env
    assert env["KUBETUNE_TERMINATION_LOG"] == "/tmp/t"
    assert env["OMP_NUM_THREADS"] == "8"  # the user's own setting wins


def test_trial_command_expands_and_maps_python() -> None:
    container = {"name": "t", "command": ["python3", "-m", "x"], "args": ["--lr=$(LR)"]}
    assert trial_command(container, ENV, "/venv/bin/python") == [
        "/venv/bin/python",
        "-m",
        "x",
        "--lr=0.01",
    ]
    other = {"name": "t", "command": ["/opt/train", "$$(LR)"]}
    assert trial_command(other, ENV, "/venv/bin/python") == ["/opt/train", "$(LR)"]
    with pytest.raises(ValueError, match="no command"):
        trial_command({"name": "t", "args": ["x"]}, ENV, "py")


def test_tail_keeps_the_end_and_survives_bad_bytes() -> None:
    assert tail(b"a" * 5000 + b"END", 10) == "aaaaaaaEND"
    assert tail(b"\xff\xfeok") == "\ufffd\ufffdok"


def test_bare_postgresql_urls_use_the_installed_driver() -> None:
    url = "postgresql://u:p@h:5432/db"
    assert normalise_storage_url(url, have_psycopg3=False) == "postgresql+psycopg2://u:p@h:5432/db"
    assert normalise_storage_url(url, have_psycopg3=True) == url
    assert normalise_storage_url("postgres://h/db", have_psycopg3=False).startswith(
        "postgresql+psycopg2://"
    )
    for other in ("postgresql+psycopg2://h/db", "sqlite:///x.db", "mysql://h/db"):
        assert normalise_storage_url(other, have_psycopg3=False) == other
