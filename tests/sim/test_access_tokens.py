"""The simulator's bearer tokens (security.TokenIssuer): a token's signature is checked once per token, and
everything that can change (its expiry against the simulator's clock, the type a route asks for) at every use."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest

from ksefd.sim import security
from ksefd.sim.clock import ManualClock
from ksefd.sim.errors import Unauthorized
from ksefd.sim.store import Store

START = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)


def issuer() -> tuple[security.TokenIssuer, ManualClock]:
    clock = ManualClock(START)
    return security.TokenIssuer(Store(), clock), clock


def test_a_token_is_decoded_once_however_often_it_is_presented(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: every API call checked its bearer twice (rate-limit middleware, handler), a fifth of the
    simulator's CPU per online invoice."""
    tokens, _ = issuer()
    token, _ = tokens.issue("ContextToken", dt.timedelta(minutes=15), {"auth-ref": "A"})
    decoded: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    for _ in range(5):
        assert tokens.verify(token, "ContextToken")["auth-ref"] == "A"
    assert decoded == [token]


def test_a_verified_token_still_expires_and_keeps_its_type() -> None:
    tokens, clock = issuer()
    token, _ = tokens.issue("ContextToken", dt.timedelta(minutes=15), {"auth-ref": "A"})
    tokens.verify(token, "ContextToken")["auth-ref"] = "changed"          # a caller cannot change the next answer
    assert tokens.verify(token, "ContextToken")["auth-ref"] == "A"
    with pytest.raises(Unauthorized):
        tokens.verify(token, "RefreshToken")
    clock.advance(15 * 60)
    with pytest.raises(Unauthorized):
        tokens.verify(token, "ContextToken")


def test_a_token_signed_with_another_secret_is_refused_every_time() -> None:
    tokens, _ = issuer()
    other, _ = issuer()
    forged, _ = other.issue("ContextToken", dt.timedelta(minutes=15), {"auth-ref": "A"})
    for _ in range(2):
        with pytest.raises(Unauthorized):
            tokens.verify(forged, "ContextToken")
