"""Per-trial tokens for the report API.

A token lets one attempt of one trial write to that trial and nothing else, without the pod
holding database credentials. It is ``"<attempt>.<hex HMAC-SHA256(key, msg)>"`` with
``msg = f"{namespace}/{study}/{number}/{attempt}"`` (see docs/architecture.md). The operator
is the only holder of the key; the report API recomputes the MAC from the request's path.

Tokens are secrets: never log them, never put them in status, Events or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["MIN_KEY_BYTES", "TokenSigner", "generate_key"]

#: Shortest accepted HMAC key. Short keys make tokens guessable offline.
MIN_KEY_BYTES = 16

# Canonical form only: no sign, no leading zeros, ASCII digits, lowercase hex. A token has
# exactly one spelling, so a MAC cannot be replayed under an alias such as "01.<mac>".
_TOKEN_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.([0-9a-f]{64})", re.ASCII)


def generate_key() -> bytes:
    """Return a fresh random key (32 bytes), e.g. for the local runner."""
    return secrets.token_bytes(32)


def _check_name(what: str, value: str) -> None:
    # "/" separates the fields of the MAC'd message; allowing it would make two different
    # (namespace, study) pairs sign the same message. Kubernetes names never contain it.
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/', got {value!r}")


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 999_999_999:
        raise ValueError(f"{what} must be an int in [0, 999999999], got {value!r}")


class TokenSigner:
    """Issues and verifies per-trial-attempt tokens under one secret key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray):
            raise TypeError("token key must be bytes")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"token key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "TokenSigner(key=<redacted>)"

    def _mac(self, namespace: str, study: str, number: int, attempt: int) -> str:
        # surrogatepass: hostile paths may carry lone surrogates; the encoding stays injective.
        message = f"{namespace}/{study}/{number}/{attempt}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, namespace: str, study: str, number: int, attempt: int) -> str:
        """Return the token for ``attempt`` of trial ``number`` of ``namespace/study``."""
        _check_name("namespace", namespace)
        _check_name("study", study)
        _check_count("trial number", number)
        _check_count("attempt", attempt)
        return f"{attempt}.{self._mac(namespace, study, number, attempt)}"

    def verify(self, token: str, namespace: str, study: str, number: int) -> int | None:
        """Return the token's attempt if its MAC is valid for this trial, else None.

        Never raises on hostile input. Whether the attempt is the trial's current one is the
        caller's check (it needs the ledger).
        """
        if not isinstance(token, str) or not isinstance(namespace, str):
            return None
        if not isinstance(study, str) or isinstance(number, bool) or not isinstance(number, int):
            return None
        if not namespace or not study or "/" in namespace or "/" in study or number < 0:
            return None
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        attempt = int(match.group(1))
        expected = self._mac(namespace, study, number, attempt)
        if not hmac.compare_digest(expected.encode("ascii"), match.group(2).encode("ascii")):
            return None
        return attempt
