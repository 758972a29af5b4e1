"""The operator's configuration is parsed in one place, with one set of defaults and checks."""

from __future__ import annotations

import pytest

from kubetune.config import (
    DEFAULT_METRICS_PORT,
    DEFAULT_REPORT_PORT,
    ConfigError,
    OperatorConfig,
)

ENV = {"KUBETUNE_STORAGE_URL": "postgresql://u:hunter2@db/optuna", "KUBETUNE_TOKEN_KEY": "k" * 16}


def test_defaults_come_from_one_place() -> None:
    config = OperatorConfig.from_env(ENV)
    assert (config.metrics_port, config.report_port) == (DEFAULT_METRICS_PORT, DEFAULT_REPORT_PORT)
    assert config.resync_seconds == 10.0
    assert config.report_url is None


def test_environment_settings_are_read() -> None:
    env = {
        **ENV,
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_REPORT_PORT": "-1",
        "KUBETUNE_RESYNC_SECONDS": "2.5",
        "KUBETUNE_IMAGE_PULL_GRACE_SECONDS": "30",
        "KUBETUNE_EXPECTATION_SECONDS": "1.5",
        "KUBETUNE_REPORT_URL": "http://report:8082",
    }
    config = OperatorConfig.from_env(env)
    assert (config.metrics_port, config.report_port) == (0, -1)
    assert (config.resync_seconds, config.image_pull_grace_seconds) == (2.5, 30.0)
    assert config.expectation_seconds == 1.5
    assert config.report_url == "http://report:8082"


def test_explicit_values_win_over_the_environment() -> None:
    config = OperatorConfig.from_env(
        {**ENV, "KUBETUNE_METRICS_PORT": "9000"},
        storage_url="sqlite:///x.db",
        token_key=b"z" * 20,
        metrics_port=9100,
        report_url="http://elsewhere",
    )
    assert config.storage_url == "sqlite:///x.db"
    assert config.token_key == b"z" * 20
    assert config.metrics_port == 9100
    assert config.report_url == "http://elsewhere"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KUBETUNE_TOKEN_KEY": "k" * 16}, "KUBETUNE_STORAGE_URL"),
        ({**ENV, "KUBETUNE_TOKEN_KEY": "short"}, "at least 16 bytes"),
        ({**ENV, "KUBETUNE_RESYNC_SECONDS": "soon"}, "not a number"),
        ({**ENV, "KUBETUNE_METRICS_PORT": "http"}, "not a number"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        OperatorConfig.from_env(env)


def test_repr_hides_the_storage_url_and_the_key() -> None:
    text = repr(OperatorConfig.from_env(ENV))
    assert "hunter2" not in text and "k" * 16 not in text
