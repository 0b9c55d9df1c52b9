"""`KsefClient`: the facade the daemon uses for everything it says to KSeF.

    async with KsefClient("test", base_url=sim_url, clock=clock, gate=limiter, token_store=store) as client:
        acme = client.context(ContextIdentifier.nip("5265877635"), KsefToken.parse(token_text))
        sent = await acme.online().send(invoice_bytes)           # SentInvoice(reference_number, ...)
        status = await acme.sessions.invoice(sent.session_reference_number, sent.reference_number)
        await acme.online().close()

One client holds one HTTP transport, the Ministry's public keys and the authenticator; `context(...)` gives a
`KsefContext` per (context, credentials) pair, with its own tokens. One person's certificate can open several
contexts (one per company NIP). Other modules (batch, export, receiving) use `KsefContext.request` for
authorised calls and `KsefClient.transport` for pre-signed URLs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .auth import Authenticator, AuthOptions, AuthSession, ContextIdentifier, Credentials, TokenStore, credential_id
from .clock import Clock, Sleep, SystemClock, real_sleep
from .credentials import KsefToken
from .crypto import PublicKeys
from .environments import Environment, custom, environment
from .models import ContextLimits
from .online import FA3, FormCode, OnlineOptions, OnlineSender
from .sessions import SessionQueries
from .transport import RequestGate, Response, RetryPolicy, Transport

if TYPE_CHECKING:       # imported lazily below: those modules belong to the batch/receiving layer of this package
    from .batch import BatchOptions, BatchSender
    from .certificates import CertificateManager
    from .export import Exporter, ExportOptions
    from .receiving import Receiver


class KsefContext:
    """Everything done in one KSeF context with one set of credentials."""

    def __init__(self, client: KsefClient, auth: AuthSession) -> None:
        self.client = client
        self.auth = auth
        self.sessions = SessionQueries(auth)
        self._online: dict[FormCode, OnlineSender] = {}

    @property
    def context(self) -> ContextIdentifier:
        return self.auth.context

    def online(self, form_code: FormCode = FA3, options: OnlineOptions | None = None) -> OnlineSender:
        """The online sender for `form_code` (created on first use with `options`)."""
        if form_code not in self._online:
            self._online[form_code] = OnlineSender(self.auth, self.client.public_keys, form_code,
                                                   clock=self.client.clock,
                                                   options=options or self.client.online_options)
        return self._online[form_code]

    def batch(self, form_code: FormCode = FA3, options: BatchOptions | None = None) -> BatchSender:
        """A batch sender in this context (batch.py)."""
        from .batch import BatchSender
        return BatchSender(self.auth, self.client.public_keys, form_code, sleep=self.client.sleep, options=options)

    def exporter(self, options: ExportOptions | None = None) -> Exporter:
        """Invoice exports in this context (export.py)."""
        from .export import Exporter
        return Exporter(self.auth, self.client.public_keys, sleep=self.client.sleep, options=options)

    def certificates(self) -> CertificateManager:
        """KSeF certificates of the logged-in subject (certificates.py; enrolling needs a XAdES login)."""
        from .certificates import CertificateManager
        return CertificateManager(self.auth, sleep=self.client.sleep)

    def receiver(self) -> Receiver:
        """Metadata queries and single downloads in this context (receiving.py)."""
        from .receiving import Receiver
        return Receiver(self.auth)

    async def authenticate(self) -> None:
        """Authenticate now (otherwise the first call does it); raises AuthenticationFailed with the reason."""
        await self.auth.access_token()

    async def request(self, method: str, template: str, **kwargs: Any) -> Response:
        """An authorised KSeF call in this context (Transport.request arguments; 401 -> re-auth once)."""
        return await self.auth.request(method, template, **kwargs)

    async def limits(self) -> ContextLimits:
        """GET /limits/context: session invoice caps and sizes (PROTOCOL.md §7, §14.5)."""
        return (await self.request("GET", "/limits/context", expect=(200,))).decode(ContextLimits)

    async def close(self) -> list[str]:
        """Close open online sessions; returns their reference numbers (for the session UPOs)."""
        closed = [await sender.close() for sender in self._online.values()]
        return [ref for ref in closed if ref]


class KsefClient:
    def __init__(self, env: Environment | str = "test", *, base_url: str | None = None, clock: Clock | None = None,
                 gate: RequestGate | None = None, token_store: TokenStore | None = None,
                 auth_options: AuthOptions | None = None, online_options: OnlineOptions | None = None,
                 retry: RetryPolicy | None = None, sleep: Sleep = real_sleep, timeout: float = 60.0) -> None:
        if isinstance(env, str):
            self.environment = environment(env, base_url)
        elif base_url:
            self.environment = Environment(env.name, custom(base_url).api_url, env.qr_url, env.status_url)
        else:
            self.environment = env
        self.clock = clock or SystemClock()
        self.sleep = sleep
        self.token_store = token_store
        self.online_options = online_options or OnlineOptions()
        self.transport = Transport(self.environment.api_url, gate=gate, retry=retry, timeout=timeout, sleep=sleep)
        self.public_keys = PublicKeys(self.transport, self.clock)
        self.authenticator = Authenticator(self.transport, self.public_keys, self.environment, clock=self.clock,
                                           sleep=sleep, options=auth_options)
        self._contexts: dict[str, KsefContext] = {}

    def context(self, context: ContextIdentifier | str, credentials: Credentials | str) -> KsefContext:
        """The KsefContext for this context and credentials (the same object on every call). A str is a KSeF
        token as pasted: cleaned and checked at once (CredentialsError before any request)."""
        ctx = context if isinstance(context, ContextIdentifier) else ContextIdentifier.parse(context)
        if isinstance(credentials, str):
            credentials = KsefToken.parse(credentials)
        key = f"{ctx.key}|{credential_id(credentials)}"
        if key not in self._contexts:
            auth = AuthSession(self.authenticator, ctx, credentials, store=self.token_store)
            self._contexts[key] = KsefContext(self, auth)
        return self._contexts[key]

    async def close(self) -> None:
        """Close the HTTP sessions. Open online sessions are left to the caller (`KsefContext.close`)."""
        await self.transport.close()

    async def __aenter__(self) -> KsefClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
