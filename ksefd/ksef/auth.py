"""Authentication (PROTOCOL.md §3): challenge -> KSeF token or XAdES -> poll -> redeem once -> refresh.

* `ContextIdentifier`: the context an access token is bound to (Nip, InternalId, NipVatUe, PeppolId).
* `Authenticator.authenticate(context, credentials)`: the whole flow, giving `Tokens`. The KSeF token is
  encrypted with RSA-OAEP-SHA256 as `token|timestampMs` for the KsefTokenEncryption key, whose publicKeyId is
  sent; a 21470 re-fetches the keys and starts again. A certificate signs an AuthTokenRequest (xades.py).
  Transport failures and status 550 start the flow again with a new challenge, a bounded number of times;
  other failures raise AuthenticationFailed with a message a person can act on (auth_messages.py).
* `AuthSession`: one context's tokens. `access_token()` returns a token valid for at least `refresh_margin`,
  refreshing with the refresh token (from validUntil, on the injectable clock) or authenticating again when the
  refresh token ends; `request(...)` sends an authorised call and re-authenticates fully once on a 401.
  One certificate can have several AuthSessions, one per company context.
* `TokenStore`: optional persistence so a restarted daemon reuses its tokens (keyed per context + credential).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from ksefd.i18n import N_

from . import auth_messages, xades
from .clock import Clock, Sleep, SystemClock, aware, poll, real_sleep
from .credentials import CertificateCredentials, KsefToken
from .crypto import TOKEN_ENCRYPTION, PublicKey, PublicKeys, b64
from .environments import Environment
from .errors import (
    AuthenticationFailed,
    AuthenticationPending,
    KsefError,
    KsefException,
    TransportError,
    Unauthorized,
)
from .models import (
    AuthenticationInit,
    AuthenticationStatus,
    AuthenticationTokens,
    Challenge,
    RefreshedAccessToken,
    StatusInfo,
)
from .ratelimit_flight import continuing
from .texts import said
from .transport import Response, Transport

log = structlog.get_logger("ksefd.ksef.auth")
Credentials = KsefToken | CertificateCredentials

_CONTEXT_PATTERNS = {
    "Nip": (re.compile(r"^\d{10}$"), N_("10 digits")),
    "InternalId": (re.compile(r"^\d{10}-\d{5}$"), N_("NIP-5 digits, e.g. 5265877635-12345")),
    "NipVatUe": (re.compile(r"^\d{10}-[A-Z]{2}[0-9A-Za-z+*]{2,12}$"),
                 N_("NIP-EU VAT number, e.g. 5265877635-DE123456789")),
    "PeppolId": (re.compile(r"^P[A-Z]{2}\d{6}$"), N_("P + 2 letters + 6 digits, e.g. PPL123456")),
}
# 400 codes of redeem/refresh after which only a new authentication helps (PROTOCOL.md §3.5).
_REAUTH_CODES = frozenset({21301, 21304, 21308})


@dataclass(frozen=True)
class ContextIdentifier:
    type: str
    value: str

    def __post_init__(self) -> None:
        if self.type not in _CONTEXT_PATTERNS:
            raise KsefError(said(N_("context type {type} is unknown; use one of {types}"), type=repr(self.type),
                                 types=", ".join(_CONTEXT_PATTERNS)))
        pattern, shape = _CONTEXT_PATTERNS[self.type]
        if not pattern.match(self.value):
            raise KsefError(said(N_("{type} context {value} is malformed: expected {shape}"), type=self.type,
                                 value=repr(self.value), shape=said(shape)))

    @classmethod
    def nip(cls, value: str) -> ContextIdentifier:
        return cls("Nip", value.strip())

    @classmethod
    def parse(cls, text: str) -> ContextIdentifier:
        """"Nip:5265877635" (the `key` form) or a bare NIP."""
        kind, sep, value = text.strip().partition(":")
        return cls(kind, value) if sep else cls("Nip", kind)

    @property
    def key(self) -> str:
        """"Nip:5265877635": the context string of the transport's rate-limit hook and of TokenStore keys."""
        return f"{self.type}:{self.value}"

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    def __str__(self) -> str:
        return f"{self.type} {self.value}"


@dataclass(frozen=True, repr=False)
class Tokens:
    access_token: str
    access_valid_until: dt.datetime
    refresh_token: str
    refresh_valid_until: dt.datetime
    reference_number: str

    def __repr__(self) -> str:
        return (f"Tokens({self.reference_number}, access until {self.access_valid_until.isoformat()}, "
                f"refresh until {self.refresh_valid_until.isoformat()})")


class TokenStore(Protocol):
    """Where an AuthSession keeps its tokens between runs (the daemon's SQLite; secrets at rest are its concern)."""

    async def load(self, key: str) -> Tokens | None: ...

    async def save(self, key: str, tokens: Tokens) -> None: ...

    async def clear(self, key: str) -> None: ...


@dataclass(frozen=True)
class AuthOptions:
    refresh_margin: dt.timedelta = dt.timedelta(seconds=60)   # refresh this long before validUntil
    poll_first: float = 0.2           # seconds before the first GET /auth/{ref}
    poll_factor: float = 1.5
    poll_max: float = 5.0
    poll_budget: float = 180.0        # total wait for status 100 to end (OCSP on DEMO/PROD can be slow)
    attempts: int = 3                 # whole flows tried on transport failures / status 550
    verify_certificate_chain: bool | None = None   # XAdES query flag; None leaves it out
    allowed_ips: dict[str, list[str]] = field(default_factory=dict)   # authorizationPolicy.allowedIps


def credential_id(credentials: Credentials) -> str:
    """A non-secret id of the credentials, for TokenStore keys and logs."""
    if isinstance(credentials, KsefToken):
        return f"token:{credentials.reference_number}"
    return f"cert:{credentials.fingerprint}"


def _identity(credentials: Credentials) -> str:
    if isinstance(credentials, KsefToken):
        return f"the KSeF token {credentials.reference_number}"
    return credentials.identity


class Authenticator:
    """The stateless authentication flow; AuthSession keeps the state."""

    def __init__(self, transport: Transport, keys: PublicKeys, environment: Environment, *,
                 clock: Clock | None = None, sleep: Sleep = real_sleep, options: AuthOptions | None = None) -> None:
        self.transport = transport
        self.keys = keys
        self.environment = environment
        self.clock = clock or SystemClock()
        self.sleep = sleep
        self.options = options or AuthOptions()

    async def authenticate(self, context: ContextIdentifier, credentials: Credentials) -> Tokens:
        if isinstance(credentials, CertificateCredentials):
            credentials.check_valid(self.clock.now())
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._flow(context, credentials)
            except (TransportError, AuthenticationFailed) as exc:
                if not exc.retryable or attempt >= self.options.attempts:
                    raise
                log.warning("ksef.auth_retry", context=context.key, attempt=attempt, error=exc.message)
                await self.sleep(min(10.0, 1.0 * attempt))

    async def _flow(self, context: ContextIdentifier, credentials: Credentials) -> Tokens:
        if isinstance(credentials, KsefToken):
            init = await self.keys.with_key(TOKEN_ENCRYPTION,
                                            lambda key: self._start_with_token(context, credentials, key))
        else:
            init = await self._start_with_certificate(context, credentials)
        with continuing():       # before other logins' challenges: this company connects sooner (issue #16)
            await self._wait(init, context, credentials)
            response = await self.transport.request("POST", "/auth/token/redeem",
                                                    bearer=init.authentication_token.token, replay_safe=False,
                                                    expect=(200,))
        redeemed = response.decode(AuthenticationTokens)
        log.info("ksef.authenticated", context=context.key, reference=init.reference_number,
                 credential=credential_id(credentials))
        return Tokens(redeemed.access_token.token, aware(redeemed.access_token.valid_until),
                      redeemed.refresh_token.token, aware(redeemed.refresh_token.valid_until), init.reference_number)

    async def _challenge(self) -> Challenge:
        response = await self.transport.request("POST", "/auth/challenge", replay_safe=True, expect=(200,))
        return response.decode(Challenge)

    async def _start_with_token(self, context: ContextIdentifier, token: KsefToken, key: PublicKey
                                ) -> AuthenticationInit:
        challenge = await self._challenge()
        # PROTOCOL.md §3.2: encrypt "token|timestampMs" with the challenge's own timestampMs (no rounding).
        encrypted = key.encrypt(f"{token.value}|{challenge.timestamp_ms}".encode())
        body: dict[str, Any] = {"challenge": challenge.challenge, "contextIdentifier": context.as_json(),
                                "encryptedToken": b64(encrypted), "publicKeyId": key.public_key_id}
        if self.options.allowed_ips:
            body["authorizationPolicy"] = {"allowedIps": _allowed_ips_json(self.options.allowed_ips)}
        # Not replayed once it may have reached KSeF (the challenge is single-use); `authenticate` starts over.
        with continuing():
            response = await self.transport.request("POST", "/auth/ksef-token", json=body, replay_safe=False,
                                                    expect=(202,))
        return response.decode(AuthenticationInit)

    async def _start_with_certificate(self, context: ContextIdentifier, credentials: CertificateCredentials
                                      ) -> AuthenticationInit:
        challenge = await self._challenge()
        # Signing time a minute back, as the official client does, so a slightly fast clock here is no problem.
        signed = xades.signed_auth_token_request(challenge.challenge, context.type, context.value, credentials,
                                                 self.clock.now() - dt.timedelta(minutes=1),
                                                 self.options.allowed_ips or None)
        query = None
        if self.options.verify_certificate_chain is not None:
            query = {"verifyCertificateChain": "true" if self.options.verify_certificate_chain else "false"}
        with continuing():
            response = await self.transport.request("POST", "/auth/xades-signature", body=signed, query=query,
                                                    content_type="application/xml", replay_safe=False,
                                                    expect=(202,))
        return response.decode(AuthenticationInit)

    async def _wait(self, init: AuthenticationInit, context: ContextIdentifier, credentials: Credentials) -> None:
        async def fetch() -> StatusInfo:
            response = await self.transport.request("GET", "/auth/{referenceNumber}",
                                                    params={"referenceNumber": init.reference_number},
                                                    bearer=init.authentication_token.token, expect=(200,))
            return response.decode(AuthenticationStatus).status

        def pending(status: StatusInfo, waited: float) -> AuthenticationPending:
            return AuthenticationPending(f"authentication {init.reference_number} into {context} is still in "
                                         f"progress after {waited:.0f} s (status {status.code}); retry later")

        options = self.options
        status = await poll(fetch, lambda s: s.code == 200 or s.code >= 400, sleep=self.sleep,
                            first=options.poll_first, factor=options.poll_factor, maximum=options.poll_max,
                            budget=options.poll_budget, gave_up=pending)
        if status.code >= 400:
            raise self._failure(status.code, status.description, status.details or [], context, credentials,
                                init.reference_number)

    def _failure(self, code: int, description: str, details: list[str], context: ContextIdentifier,
                 credentials: Credentials, reference: str) -> AuthenticationFailed:
        token_context = credentials.context_part if isinstance(credentials, KsefToken) else ""
        message = auth_messages.explain(code, description, details, context=str(context),
                                        identity=_identity(credentials), environment=self.environment,
                                        token_context=token_context)
        log.warning("ksef.auth_failed", context=context.key, code=code, reference=reference)
        return AuthenticationFailed(message, code=code, description=description, details=details,
                                    context=context.key, reference_number=reference)

    async def refresh(self, tokens: Tokens) -> Tokens:
        """A new access token from the refresh token (not rotated, PROTOCOL.md §3.5)."""
        response = await self.transport.request("POST", "/auth/token/refresh", bearer=tokens.refresh_token,
                                                replay_safe=True, expect=(200,))
        access = response.decode(RefreshedAccessToken).access_token
        return replace(tokens, access_token=access.token, access_valid_until=aware(access.valid_until))


def _allowed_ips_json(allowed: dict[str, list[str]]) -> dict[str, list[str]]:
    names = {"Ip4Address": "ip4Addresses", "Ip4Range": "ip4Ranges", "Ip4Mask": "ip4Masks"}
    return {names[k]: v for k, v in allowed.items() if k in names and v}


class AuthSession:
    """The tokens of one (context, credentials) pair, kept fresh; safe for concurrent callers."""

    def __init__(self, authenticator: Authenticator, context: ContextIdentifier, credentials: Credentials, *,
                 store: TokenStore | None = None) -> None:
        self.authenticator = authenticator
        self.context = context
        self.credentials = credentials
        self.store = store
        self.store_key = f"{context.key}|{credential_id(credentials)}"
        self._tokens: Tokens | None = None
        self._loaded = False
        self._lock = asyncio.Lock()

    @property
    def transport(self) -> Transport:
        return self.authenticator.transport

    @property
    def tokens(self) -> Tokens | None:
        return self._tokens

    async def access_token(self) -> str:
        async with self._lock:
            tokens = await self._fresh_tokens()
            return tokens.access_token

    async def _fresh_tokens(self) -> Tokens:
        if not self._loaded and self.store is not None:
            self._tokens = await self.store.load(self.store_key)
        self._loaded = True
        now = self.authenticator.clock.now()
        margin = self.authenticator.options.refresh_margin
        tokens = self._tokens
        if tokens is not None and now < tokens.access_valid_until - margin:
            return tokens
        if tokens is not None and now < tokens.refresh_valid_until - margin:
            try:
                return await self._keep(await self.authenticator.refresh(tokens))
            except (Unauthorized, KsefException) as exc:
                if isinstance(exc, KsefException) and not _REAUTH_CODES.intersection(exc.codes):
                    raise
                log.info("ksef.refresh_refused", context=self.context.key, error=exc.message)
        return await self._keep(await self.authenticator.authenticate(self.context, self.credentials))

    async def _keep(self, tokens: Tokens) -> Tokens:
        self._tokens = tokens
        if self.store is not None:
            await self.store.save(self.store_key, tokens)
        return tokens

    async def reauthenticate(self, rejected_access_token: str | None = None) -> None:
        """Forget the tokens (all of them: a 401 may mean the auth session itself was revoked), unless another
        caller already replaced the rejected one."""
        async with self._lock:
            if rejected_access_token is not None and (
                    self._tokens is None or self._tokens.access_token != rejected_access_token):
                return
            self._tokens = None
            self._loaded = True
            if self.store is not None:
                await self.store.clear(self.store_key)

    async def request(self, method: str, template: str, **kwargs: Any) -> Response:
        """Transport.request with this context's Bearer token; on 401 authenticate again and send once more
        (a 401 means KSeF did not process the call, so even an invoice send may be repeated)."""
        used: list[str] = []

        async def bearer() -> str:
            # Read by the transport after the rate limiter's wait (up to an hour), never before it.
            used.append(await self.access_token())
            return used[-1]

        try:
            return await self.transport.request(method, template, bearer=bearer, context=self.context.key, **kwargs)
        except Unauthorized:
            log.info("ksef.unauthorized_reauth", context=self.context.key, path=template)
            await self.reauthenticate(used[-1] if used else None)
            return await self.transport.request(method, template, bearer=bearer, context=self.context.key, **kwargs)

    async def logout(self) -> None:
        """DELETE /auth/sessions/current: invalidates the refresh token (PROTOCOL.md §3.6)."""
        if self._tokens is None:
            return
        await self.transport.request("DELETE", "/auth/sessions/current", bearer=self._tokens.access_token,
                                     context=self.context.key, expect=(204,))
        await self.reauthenticate()
