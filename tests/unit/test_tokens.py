from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.tokens import MIN_KEY_BYTES, TokenSigner, generate_key

KEY = b"k" * 32
SIGNER = TokenSigner(KEY)


def test_issue_matches_the_documented_format() -> None:
    # docs/architecture.md: "<attempt>.<hex HMAC-SHA256(key, f'{ns}/{study}/{number}/{attempt}')>"
    expected = hmac.new(KEY, b"team-a/digits/7/2", hashlib.sha256).hexdigest()
    assert SIGNER.issue("team-a", "digits", 7, 2) == f"2.{expected}"


def test_round_trip_returns_the_attempt() -> None:
    for attempt in (0, 1, 17):
        token = SIGNER.issue("ns", "study", 3, attempt)
        assert SIGNER.verify(token, "ns", "study", 3) == attempt


@pytest.mark.parametrize(
    ("namespace", "study", "number"),
    [
        ("ns", "study", 4),  # another trial
        ("ns", "other", 3),  # another study
        ("other", "study", 3),  # another namespace
        ("ns", "studyx", 3),
        ("nss", "tudy", 3),  # same concatenated characters, different split
    ],
)
def test_token_is_bound_to_its_trial(namespace: str, study: str, number: int) -> None:
    token = SIGNER.issue("ns", "study", 3, 0)
    assert SIGNER.verify(token, namespace, study, number) is None


def test_other_key_is_refused() -> None:
    token = TokenSigner(b"x" * 32).issue("ns", "study", 3, 0)
    assert SIGNER.verify(token, "ns", "study", 3) is None


def test_attempt_cannot_be_swapped_under_the_same_mac() -> None:
    mac = SIGNER.issue("ns", "study", 3, 0).split(".", 1)[1]
    assert SIGNER.verify(f"1.{mac}", "ns", "study", 3) is None


def test_forged_mac_is_refused() -> None:
    token = SIGNER.issue("ns", "study", 3, 0)
    attempt, mac = token.split(".")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert SIGNER.verify(f"{attempt}.{flipped}", "ns", "study", 3) is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: "",
        lambda t: ".",
        lambda t: t.split(".")[1],  # no attempt
        lambda t: t + "0",  # too long
        lambda t: t[:-1],  # too short
        lambda t: t.upper(),  # hex must be lowercase
        lambda t: "0" + t,  # non-canonical attempt "00"
        lambda t: "+" + t,
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: "\u0660" + t[1:],  # Arabic-Indic zero is a digit to str.isdigit
        lambda t: t.replace(".", ":"),
        lambda t: "9999999999." + t.split(".")[1],  # attempt out of range
        lambda t: "Bearer " + t,
    ],
)
def test_bad_formats_are_refused(mutate: object) -> None:
    token = SIGNER.issue("ns", "study", 3, 0)
    assert callable(mutate)
    assert SIGNER.verify(mutate(token), "ns", "study", 3) is None


@pytest.mark.parametrize(
    ("token", "namespace", "study", "number"),
    [
        (None, "ns", "study", 3),
        (b"0.abc", "ns", "study", 3),
        ("0." + "a" * 64, "", "study", 3),
        ("0." + "a" * 64, "ns", "", 3),
        ("0." + "a" * 64, "n/s", "study", 3),
        ("0." + "a" * 64, "ns", "study", -1),
        ("0." + "a" * 64, "ns", "study", True),
        ("0." + "a" * 64, "ns\ud800", "study", 3),  # lone surrogate from a hostile path
    ],
)
def test_hostile_arguments_never_raise(
    token: object, namespace: str, study: str, number: int
) -> None:
    assert SIGNER.verify(token, namespace, study, number) is None  # type: ignore[arg-type]


def test_unicode_names_work_and_stay_distinct() -> None:
    token = SIGNER.issue("équipe", "étude-ß", 0, 0)
    assert SIGNER.verify(token, "équipe", "étude-ß", 0) == 0
    assert SIGNER.verify(token, "equipe", "étude-ß", 0) is None
    assert SIGNER.verify(token, "équipe", "étude-ss", 0) is None


@pytest.mark.parametrize(
    ("namespace", "study", "number", "attempt"),
    [
        ("", "s", 0, 0),
        ("a/b", "s", 0, 0),
        ("n", "s", -1, 0),
        ("n", "s", 0, -1),
        ("n", "s", True, 0),
    ],
)
def test_issue_refuses_ambiguous_or_bad_fields(
    namespace: str, study: str, number: int, attempt: int
) -> None:
    with pytest.raises(ValueError, match=r"namespace|study|trial number|attempt"):
        SIGNER.issue(namespace, study, number, attempt)


def test_short_or_wrong_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        TokenSigner(b"x" * (MIN_KEY_BYTES - 1))
    with pytest.raises(TypeError):
        TokenSigner("a string key" * 4)  # type: ignore[arg-type]
    assert len(generate_key()) >= MIN_KEY_BYTES
    assert generate_key() != generate_key()


def test_repr_never_shows_the_key() -> None:
    assert "k" * 8 not in repr(SIGNER)


@given(st.text(), st.text(min_size=1), st.integers())
def test_verify_never_raises_on_random_input(token: str, study: str, number: int) -> None:
    # A random string is (overwhelmingly) not a valid MAC; the point is that nothing raises.
    assert SIGNER.verify(token, "ns", study, number) is None
