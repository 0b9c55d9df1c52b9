"""Online (interactive) sessions (PROTOCOL.md §4, §14.3): open, send, close.

`OnlineSender` keeps one open session per (context, form code) and sends invoices into it:

* opening uses a fresh AES-256 key and IV, wrapped with the current SymmetricKeyEncryption key; a 21470 re-fetches
  the keys and opens again with a newly wrapped key (§2.1);
* each invoice is sent as its exact bytes: SHA-256 and size of the plaintext and of the ciphertext (AES-256-CBC,
  PKCS#7, IV not prepended, §13.1) and returns the invoice reference number (not the KSeF number, §13.4);
* a session is replaced before its 12-hour lifetime ends (`lifetime_margin`) or when it holds `max_invoices`
  (10 000 by default, `GET /limits/context` has the real value); the old one is closed once its sends finish;
* a send refused with 21184 "session temporarily unavailable" (or 21180/21173/21155, which also mean "not
  accepted, this session cannot take it") goes to a new session with the same bytes and hash (§14.3);
* a send is never re-POSTed after it may have reached KSeF: such a failure raises OutcomeUnknown carrying the
  session reference and the invoice hash (transport.py), for the daemon to resolve.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .auth import AuthSession
from .clock import Clock, SystemClock, aware
from .crypto import SYMMETRIC_KEY_ENCRYPTION, PublicKey, PublicKeys, SymmetricKey, b64, digest
from .errors import KsefException, OutcomeUnknown
from .models import OpenOnlineSessionResponse, SendInvoiceResponse

log = structlog.get_logger("ksefd.ksef.online")

# Codes of POST .../invoices meaning "this session cannot take the invoice; it was not accepted".
SESSION_UNAVAILABLE = 21184
_MOVE_ON = {21184: "temporarily unavailable", 21180: "closed or expired", 21173: "unknown", 21155: "full"}


@dataclass(frozen=True)
class FormCode:
    system_code: str
    schema_version: str
    value: str

    def as_json(self) -> dict[str, str]:
        return {"systemCode": self.system_code, "schemaVersion": self.schema_version, "value": self.value}


# PROTOCOL.md §4.1 (note the space in "FA (3)"); FA (2) is accepted on TEST only.
FA3 = FormCode("FA (3)", "1-0E", "FA")
FA2 = FormCode("FA (2)", "1-0E", "FA")
PEF3 = FormCode("PEF (3)", "2-1", "PEF")
PEF_KOR3 = FormCode("PEF_KOR (3)", "2-1", "PEF")
FA_RR1 = FormCode("FA_RR (1)", "1-1E", "FA_RR")


@dataclass
class OnlineSession:
    reference_number: str
    valid_until: dt.datetime
    opened_at: dt.datetime
    form_code: FormCode
    key: SymmetricKey
    public_key_id: str
    reserved: int = 0          # invoices sent or being sent into it
    in_flight: int = 0
    retired: bool = False
    closed: bool = False


@dataclass(frozen=True)
class SentInvoice:
    reference_number: str            # the invoice reference ("…-EE-…"); the KSeF number comes with status 200
    session_reference_number: str
    invoice_hash: str
    invoice_size: int
    offline_mode: bool


@dataclass(frozen=True)
class OnlineOptions:
    max_invoices: int = 10_000
    lifetime_margin: dt.timedelta = dt.timedelta(minutes=15)
    features: tuple[str, ...] = ()   # X-KSeF-Feature on open, e.g. "subject-identifier-validation" (§14.3)
    session_attempts: int = 3        # sessions tried for one invoice when KSeF says "use another session"


class OnlineSender:
    def __init__(self, auth: AuthSession, keys: PublicKeys, form_code: FormCode = FA3, *,
                 clock: Clock | None = None, options: OnlineOptions | None = None) -> None:
        self.auth = auth
        self.keys = keys
        self.form_code = form_code
        self.clock = clock or SystemClock()
        self.options = options or OnlineOptions()
        self._current: OnlineSession | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> OnlineSession | None:
        return self._current

    async def open(self) -> OnlineSession:
        """Open a new session (the current one, if any, is retired and closed once idle)."""
        async with self._lock:
            old = self._current
            session = self._current = await self._open()
        if old is not None:
            await self._retire(old, close=True)
        return session

    async def _open(self) -> OnlineSession:
        async def attempt(key: PublicKey) -> OnlineSession:
            symmetric = SymmetricKey.generate()
            headers = {"X-KSeF-Feature": ", ".join(self.options.features)} if self.options.features else None
            response = await self.auth.request("POST", "/sessions/online", json={
                "formCode": self.form_code.as_json(), "encryption": key.encryption_info(symmetric)},
                headers=headers, replay_safe=True, expect=(201,))
            opened = response.decode(OpenOnlineSessionResponse)
            return OnlineSession(opened.reference_number, aware(opened.valid_until), self.clock.now(),
                                 self.form_code, symmetric, key.public_key_id)

        session = await self.keys.with_key(SYMMETRIC_KEY_ENCRYPTION, attempt)
        log.info("ksef.online_opened", context=self.auth.context.key, session=session.reference_number,
                 form=self.form_code.system_code)
        return session

    def _usable(self, session: OnlineSession | None) -> bool:
        if session is None or session.retired:
            return False
        if session.reserved >= self.options.max_invoices:
            return False
        return self.clock.now() < session.valid_until - self.options.lifetime_margin

    async def _claim(self, avoid: OnlineSession | None) -> OnlineSession:
        """The session to send into, opening a new one when needed; reserves one invoice slot."""
        retired: OnlineSession | None = None
        async with self._lock:
            current = self._current
            if current is None or current is avoid or not self._usable(current):
                retired = current
                current = await self._open()
                self._current = current
            current.reserved += 1
            current.in_flight += 1
        if retired is not None and retired is not avoid:
            await self._retire(retired, close=True)
        return current

    async def send(self, invoice: bytes, *, offline_mode: bool = False,
                   hash_of_corrected_invoice: str | None = None,
                   before_post: Callable[[OnlineSession], Awaitable[None]] | None = None) -> SentInvoice:
        """Send the exact `invoice` bytes; returns the invoice reference number (PROTOCOL.md §4.2).

        `before_post(session)` is awaited right before each POST, once per session tried: the daemon
        persists its intent (this invoice, into that session) there before the bytes can reach KSeF."""
        plain = digest(invoice)
        avoid: OnlineSession | None = None
        for attempt in range(1, self.options.session_attempts + 1):
            session = await self._claim(avoid)
            try:
                if before_post is not None:
                    await before_post(session)
                reference = await self._post(session, invoice, offline_mode, hash_of_corrected_invoice)
            except KsefException as exc:
                moved = next((c for c in exc.codes if c in _MOVE_ON), None)
                if moved is None or attempt == self.options.session_attempts:
                    await self._finished(session)
                    raise
                log.warning("ksef.online_session_refused", session=session.reference_number, code=moved,
                            reason=_MOVE_ON[moved], invoice_hash=plain.sha256)
                avoid = session
                await self._retire(session, close=moved in (21184, 21155), finished=True)
                continue
            except OutcomeUnknown as exc:
                exc.session_reference, exc.invoice_hash = session.reference_number, plain.sha256
                await self._finished(session)
                raise
            except BaseException:
                await self._finished(session)
                raise
            await self._finished(session)
            return SentInvoice(reference, session.reference_number, plain.sha256, plain.size, offline_mode)
        raise AssertionError("unreachable")

    async def _post(self, session: OnlineSession, invoice: bytes, offline_mode: bool,
                    hash_of_corrected_invoice: str | None) -> str:
        encrypted = session.key.encrypt(invoice)
        plain, sealed = digest(invoice), digest(encrypted)
        body: dict[str, Any] = {
            "invoiceHash": plain.sha256, "invoiceSize": plain.size,
            "encryptedInvoiceHash": sealed.sha256, "encryptedInvoiceSize": sealed.size,
            "encryptedInvoiceContent": b64(encrypted), "offlineMode": offline_mode,
        }
        if hash_of_corrected_invoice:
            body["hashOfCorrectedInvoice"] = hash_of_corrected_invoice
        # Never replayed after it may have reached KSeF (transport.py); 429 and 401 are still repeated safely.
        response = await self.auth.request("POST", "/sessions/online/{referenceNumber}/invoices",
                                           params={"referenceNumber": session.reference_number}, json=body,
                                           replay_safe=False, expect=(202,))
        return response.decode(SendInvoiceResponse).reference_number

    async def _finished(self, session: OnlineSession) -> None:
        session.in_flight -= 1
        if session.retired and session.in_flight == 0 and not session.closed:
            await self._close_quietly(session)

    async def _retire(self, session: OnlineSession, *, close: bool, finished: bool = False) -> None:
        async with self._lock:
            session.retired = True
            if self._current is session:
                self._current = None
            if not close:
                session.closed = True          # nothing to close: KSeF says it is closed or unknown
        if finished:
            await self._finished(session)
        elif session.in_flight == 0 and not session.closed:
            await self._close_quietly(session)

    async def _close_quietly(self, session: OnlineSession) -> None:
        session.closed = True
        try:
            await self.close_session(session.reference_number)
        except Exception as exc:   # the session closes itself after 12 h; its invoices are not affected
            log.warning("ksef.online_close_failed", session=session.reference_number, error=str(exc))

    async def close_session(self, session_reference: str) -> None:
        """POST …/close (204): starts the collective UPO (PROTOCOL.md §4.3). Already closed counts as closed."""
        try:
            await self.auth.request("POST", "/sessions/online/{referenceNumber}/close",
                                    params={"referenceNumber": session_reference}, replay_safe=True,
                                    expect=(204,))
        except KsefException as exc:
            if 21180 not in exc.codes:
                raise
            log.info("ksef.online_already_closed", session=session_reference)
        log.info("ksef.online_closed", context=self.auth.context.key, session=session_reference)

    async def close(self) -> str | None:
        """Close the current session (if any); returns its reference number for UPO polling."""
        async with self._lock:
            session, self._current = self._current, None
        if session is None:
            return None
        session.retired = True
        if session.in_flight == 0 and not session.closed:
            session.closed = True
            await self.close_session(session.reference_number)
        return session.reference_number
