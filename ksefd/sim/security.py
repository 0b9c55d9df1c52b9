"""Bearer tokens of the simulator: HS256 JWTs shaped like KSeF's (PROTOCOL.md §3.5), and the
per-endpoint permission check (openapi.json `x-required-permissions`, 403 `missing-permissions`).

Three token types: `OperationToken` (the authenticationToken, polls GET /auth/{ref} and redeems),
`ContextToken` (the accessToken, calls the API) and `RefreshToken`. Clients must treat them as opaque.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from .clock import Clock
from .errors import Forbidden, Unauthorized
from .store import Store

ISSUER = "ksef-api-ti"
VERIFIED_KEPT = 4096        # tokens whose signature was checked, kept (TokenIssuer.verify)


@dataclass(frozen=True)
class Caller:
    """Who calls, in which context, with which permissions (from a verified access token)."""

    token_type: str
    auth_reference: str
    context_type: str
    context_value: str
    subject_type: str           # Nip | Pesel | Fingerprint | Token
    subject_value: str
    permissions: frozenset[str]
    method: str                 # Token | XadesSignature
    ksef_token_reference: str | None
    client_ip: str


class TokenIssuer:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._clock = clock
        rec = store.get("sim_meta", "jwt")
        if rec is None:
            rec = {"secret": secrets.token_hex(32)}
            store.put("sim_meta", "jwt", rec)
        self._secret: str = rec["secret"]
        # A token's signature and audience were checked once: the same string verifies the same way every time,
        # so a cache changes nothing a client can see. Type and expiry are checked on every call (the clock moves).
        # Every API call checks its bearer twice (rate-limit middleware, then the handler): a fifth of the
        # simulator's CPU per online invoice (issue #16).
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(self, token_type: str, lifetime: dt.timedelta, claims: dict[str, Any]) -> tuple[str, dt.datetime]:
        now = self._clock.now()
        exp = now + lifetime
        payload = {**claims, "token-type": token_type, "iss": ISSUER, "aud": ISSUER,
                   "iat": int(now.timestamp()), "exp": int(exp.timestamp()), "jti": secrets.token_hex(8)}
        return jwt.encode(payload, self._secret, algorithm="HS256"), exp

    def verify(self, token: str, token_type: str) -> dict[str, Any]:
        """Decode and check signature, type and expiry against the simulator's clock."""
        payload = self._verified.get(token)
        if payload is None:
            try:
                # Times are checked against the simulator's clock below, never the wall clock (ManualClock tests).
                payload = jwt.decode(
                    token, self._secret, algorithms=["HS256"], audience=ISSUER,
                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
            except jwt.PyJWTError as exc:
                raise Unauthorized("Nieprawidłowy token.") from exc
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()
            self._verified[token] = payload
        payload = dict(payload)         # callers may not change the cached claims
        if payload.get("token-type") != token_type:
            raise Unauthorized(f"Wymagany jest token typu {token_type}.")
        if payload["exp"] <= self._clock.now().timestamp():
            raise Unauthorized("Token wygasł.")
        return payload


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Wymagane jest uwierzytelnienie.")
    return token.strip()


def client_ip(request: web.Request) -> str:
    return request.remote or "127.0.0.1"


def caller_from(payload: dict[str, Any], request: web.Request) -> Caller:
    return Caller(
        token_type=payload["token-type"],
        auth_reference=payload["auth-ref"],
        context_type=payload["context-identifier-type"],
        context_value=payload["context-identifier-value"],
        subject_type=payload["subject-type"],
        subject_value=payload["subject-value"],
        permissions=frozenset(payload.get("permissions", [])),
        method=payload.get("authentication-method", "Token"),
        ksef_token_reference=payload.get("ksef-token-ref"),
        client_ip=client_ip(request),
    )


def require_permissions(caller: Caller, any_of: list[str]) -> None:
    """403 `missing-permissions` unless the caller holds one of `any_of` (empty list: any caller)."""
    if any_of and not caller.permissions.intersection(any_of):
        raise Forbidden("missing-permissions",
                        "Brak wymaganych uprawnień do wykonania operacji w bieżącym kontekście.",
                        {"requiredAnyOfPermissions": any_of, "presentPermissions": sorted(caller.permissions)})
