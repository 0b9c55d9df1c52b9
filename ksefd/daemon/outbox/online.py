"""The trickle: one online session per company kept open while invoices flow (issue #5 item 4,
PROTOCOL.md §4, §14.3).

Exactly once (DESIGN.md): before each POST of an invoice, the client calls back (`before_post`) with the
session it is about to use, and the invoice is moved to SUBMITTING with that session in SQLite first. So
after a crash every invoice that may be in KSeF names the session to look in. A lost answer
(OutcomeUnknown) makes the invoice IN_DOUBT, resolved by the tracker from the session's invoice list by
hash; it is never re-sent blindly.

State files: NAME.state.json keeps saying "waiting to be sent" (or "issued offline") through the send; the
tracker rewrites it once KSeF answers that the invoice is still being processed, so an invoice accepted at
the first question goes from that straight to its result in sent/. Any other outcome of the send (in
doubt, deferred, held, rejected) writes its own.

The session is opened by the client on first use, replaced by it at its invoice cap or before expiry
(the old one closed by it), and closed here after `online_idle_close_seconds` without sends, at
shutdown, or in drain mode once nothing is waiting. Closing persists CLOSING first; the tracker then
waits for the session's final status and saves its collective UPO.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from ksefd.config import Company
from ksefd.i18n import N_
from ksefd.ksef import FA3, KsefError, OnlineOptions, OnlineSender, OnlineSession, OutcomeUnknown
from ksefd.store import Change, InvoiceRow, InvoiceState, SessionRow, SessionState, StateConflict, Store

from ..connection import CompanyConnection
from ..failures import Failure, classify, next_attempt
from .files import OutboxFiles
from .grouped import GroupedMove
from .ledger import Ledger
from .outcomes import Outcomes

S = InvoiceState
T = SessionState


class OnlineChannel:
    def __init__(self, company: Company, ledger: Ledger, outcomes: Outcomes, files: OutboxFiles,
                 connection: CompanyConnection, log: Any) -> None:
        self.company = company
        self.ledger = ledger
        self.outcomes = outcomes
        self.files = files
        self.connection = connection
        self.log = log
        self.current: SessionRow | None = None
        self.last_used: dt.datetime | None = None
        self.in_flight: dict[int, int] = {}          # session id -> sends of ours in progress
        self.retired: set[int] = set()               # sessions the client left (cap, expiry, 21184)
        self._lock = asyncio.Lock()
        self._closing: set[int] = set()
        self._sender: OnlineSender | None = None
        # Concurrent sends' steps, intents and answers alike, share commits (grouped.py); no state file for
        # either (module docstring).
        self.steps = GroupedMove(ledger)
        # What each send saw, for the availability monitor (None: KSeF answered). Set by the worker.
        self.observe: Callable[[Failure | None], None] = lambda failure: None

    @property
    def sender(self) -> OnlineSender:
        context = self.connection.context
        if self._sender is None or self._sender.auth is not context.auth:
            limits = self.connection.limits
            cap = limits.online_session.max_invoices if limits else 10_000
            self._sender = context.online(FA3, OnlineOptions(max_invoices=cap, features=self.connection.features))
        return self._sender

    @property
    def store(self) -> Store:
        return self.ledger.store

    @property
    def busy(self) -> int:
        return sum(self.in_flight.values())

    # --- sending ------------------------------------------------------------------------------------

    async def send(self, row: InvoiceRow, *, corrected_hash: str | None = None) -> Failure | None:
        """Send one QUEUED (or OFFLINE: with offlineMode, PROTOCOL.md §8.2) invoice. Returns a Failure when the
        company must go on hold. `corrected_hash`: a technical correction's original (§8.4)."""
        data = self.files.read_work(row)
        if data is None:
            self.log.error("outbox.work_file_missing", invoice=row.id, path=row.work_path)
            return None
        current: list[InvoiceRow] = [row]
        used: list[int] = []

        async def before_post(session: OnlineSession) -> None:
            session_row = await self._session_row(session)
            used.append(session_row.id)
            self.in_flight[session_row.id] = self.in_flight.get(session_row.id, 0) + 1
            shown = {"sessionReferenceNumber": session.reference_number}
            if current[0].state in (S.QUEUED, S.OFFLINE):
                # No state file for SUBMITTING and PROCESSING (module docstring): both usually last milliseconds,
                # and rewriting NAME.state.json twice per invoice on the event loop was a fifth of the trickle's
                # time (issue #16).
                current[0] = await self.steps.move(Change(
                    current[0].id, {"session_id": session_row.id, "mode": "online", "attempts": row.attempts + 1,
                                    "next_attempt_at": None}, {"session": session.reference_number}),
                    step=(current[0].state, S.SUBMITTING), known=current[0])
            else:   # the client moved it to a new session (21184/21180/21155: not taken by the old one)
                current[0] = await self.ledger.update(current[0], show=shown, session_id=session_row.id,
                                                      detail={"movedTo": session.reference_number})

        try:
            sent = await self.sender.send(data, offline_mode=row.offline, hash_of_corrected_invoice=corrected_hash,
                                          before_post=before_post)
        except StateConflict as exc:       # before the POST: another task moved it (nothing was sent)
            self.log.info("outbox.send_skipped", file=row.file_name, reason=str(exc))
            return None
        except OutcomeUnknown as exc:
            self.observe(classify(exc))
            await self.ledger.move(current[0], S.IN_DOUBT, from_state=S.SUBMITTING, detail={"error": str(exc)})
            self.log.warning("outbox.in_doubt", file=row.file_name, invoice=row.id, session=exc.session_reference)
            return None
        except KsefError as exc:
            return await self._failed(current[0], exc, corrected_hash)
        finally:
            for session_id in used:
                self.in_flight[session_id] -= 1
            self.last_used = self.ledger.now()
        self.observe(None)
        await self.steps.move(Change(current[0].id, {"invoice_ref": sent.reference_number, "status_code": 100},
                                      {"reference": sent.reference_number}),
                               step=(S.SUBMITTING, S.PROCESSING), known=current[0])
        return None

    async def _failed(self, row: InvoiceRow, exc: KsefError, corrected_hash: str | None = None) -> Failure | None:
        failure = classify(exc)
        self.observe(failure)
        self.log.warning("outbox.send_failed", file=row.file_name, invoice=row.id, verdict=failure.verdict,
                         code=failure.code, error=failure.message)
        if failure.verdict == "hold":
            await self.ledger.hold_one(row, failure, "ksef-send")
            return failure
        if failure.verdict == "reject" and row.state == S.SUBMITTING:
            error = {**failure.as_error("ksef-send"), "details": getattr(exc, "details", []),
                     "hint": N_("KSeF refused the request that carried this invoice; the message says why. "
                                "Correct the invoice and drop it again."),
                     "file": row.file_name, "invoiceHash": row.sha256}
            if corrected_hash:
                error.update(technical_correction_error(exc, corrected_hash))
            await self.ledger.reject(row, error, from_state=S.SUBMITTING)
            return None
        attempts = row.attempts + (0 if row.state == S.SUBMITTING else 1)
        when = next_attempt(self.ledger.now(), self.company.sending, attempts, failure.retry_after)
        await self.ledger.move(row, S.DEFERRED, attempts=attempts, next_attempt_at=when,
                               last_error=failure.as_error("ksef-send"), detail={"error": failure.message})
        return None

    async def _session_row(self, session: OnlineSession) -> SessionRow:
        async with self._lock:
            if self.current is not None and self.current.reference == session.reference_number:
                return self.current
            known = await self.store.sessions.by_reference(session.reference_number)
            if known is None:
                known = await self.store.sessions.add(self.company.name, "online", session.reference_number,
                                                          opened_at=session.opened_at, valid_until=session.valid_until)
                self.log.info("outbox.online_session", session=session.reference_number)
            if self.current is not None:
                self.retired.add(self.current.id)
            self.current = known
            return known

    # --- closing --------------------------------------------------------------------------------------

    def idle_for(self) -> float:
        if self.last_used is None:
            return 0.0
        return (self.ledger.now() - self.last_used).total_seconds()

    async def close_current(self, reason: str) -> None:
        async with self._lock:
            session = self.current
            if session is None or self.in_flight.get(session.id, 0):
                return
            self.current = None
        await self.close_row(session, reason, is_current=True)

    async def close_retired(self) -> None:
        for session_id in [s for s in self.retired if not self.in_flight.get(s, 0)]:
            self.retired.discard(session_id)
            session = await self.store.sessions.get(session_id)
            if session is not None and session.state == T.OPEN:
                await self.close_row(session, "replaced")

    async def close_row(self, session: SessionRow, reason: str, is_current: bool = False) -> None:
        """OPEN -> CLOSING (persisted) -> POST close -> CLOSED. A closed or expired session counts as closed."""
        if session.id in self._closing:
            return
        self._closing.add(session.id)
        try:
            await self._close_row(session, reason, is_current)
        finally:
            self._closing.discard(session.id)

    async def _close_row(self, session: SessionRow, reason: str, is_current: bool) -> None:
        if session.state == T.OPEN:
            session = await self.store.sessions.transition(session.id, T.OPEN, T.CLOSING, detail={"reason": reason})
        try:
            closed: str | None = None
            if is_current and self._sender is not None:
                closed = await self._sender.close()
            if closed != session.reference:
                await self.sender.close_session(session.reference)
        except KsefError as exc:
            self.log.warning("outbox.online_close_failed", session=session.reference, error=str(exc))
            return            # stays CLOSING: the tracker tries again
        await self.store.sessions.transition(session.id, T.CLOSING, T.CLOSED, closed_at=self.ledger.now())
        self.log.info("outbox.online_session_closed", session=session.reference, reason=reason)
        self.ledger.track_due.set()      # the tracker waits for the closed session's UPO

    def forget(self) -> None:
        """After a new login the client's sender is new: sessions opened before are not reused."""
        if self.current is not None:
            self.retired.add(self.current.id)
        self.current = None
        self._sender = None

    def describe(self) -> dict[str, Any]:
        return {"session": self.current.reference if self.current else None, "inFlight": self.busy}


CORRECTION_HINTS = {
    21166: N_("KSeF already holds a valid technical correction of this offline invoice (21166); nothing more to "
              "send. See the earlier correction in sent/."),
    21167: N_("KSeF does not allow a technical correction of this invoice (21167): the original was accepted, is "
              "still being processed, was not sent offline, or was rejected for missing permissions. If the "
              "original was accepted, issue a correcting invoice (KOR) instead."),
}


def technical_correction_error(exc: KsefError, corrected_hash: str) -> dict[str, Any]:
    """What rejected/NAME.error.json adds for a refused technical correction (PROTOCOL.md §8.4)."""
    codes = getattr(exc, "codes", ()) or ()
    hint = next((CORRECTION_HINTS[c] for c in codes if c in CORRECTION_HINTS), None)
    found: dict[str, Any] = {"technicalCorrectionOf": {"invoiceHash": corrected_hash}}
    if hint:
        found["hint"] = hint
    return found
