"""Following online invoices after the send (PROTOCOL.md §4.4-4.6, §13.4): status polls until the KSeF
number, the UPO, in-doubt resolution, and closing sessions with their collective UPO.

In doubt (DESIGN.md "exactly once"): an invoice whose send may or may not have reached KSeF (a lost answer,
or SUBMITTING found after a crash) is looked up in the session it was sent into, by its hash. Found: it is
in KSeF, follow it. Not found (also "no such session"): KSeF never took it, so it is queued again, but only
once `IN_DOUBT_GRACE` has passed since the send, so that a request still on its way cannot be missed; and if
it did arrive after all, the new send gets 440 for the same hash, which outcomes.py counts as success.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from ksefd.ksef import KsefError, KsefException, SessionInvoice
from ksefd.store import InvoiceRow, InvoiceState, SessionRow, SessionState, Store

from ..connection import CompanyConnection
from ..failures import Failure, classify
from .ledger import Ledger
from .online import OnlineChannel
from .outcomes import Accepted, Outcomes
from .polling import ProcessingTime

S = InvoiceState
T = SessionState
IN_DOUBT_GRACE = 5.0
FIRST_POLL, MAX_POLL = 0.2, 10.0
SESSION_POLL_MAX = 30.0
PER_INVOICE_AT_MOST = 10        # more accepted invoices of one session: read its list instead
POLL_CONCURRENCY = 8            # PROCESSING invoices followed at once (status, outcome, UPO)


class Tracker:
    def __init__(self, company: str, ledger: Ledger, outcomes: Outcomes, channel: OnlineChannel,
                 connection: CompanyConnection, log: Any) -> None:
        self.company = company
        self.ledger = ledger
        self.store: Store = ledger.store
        self.outcomes = outcomes
        self.channel = channel
        self.connection = connection
        self.log = log
        self._polls: dict[int, tuple[dt.datetime, float]] = {}      # invoice or session id -> (due, delay)
        self._sessions: dict[int, SessionRow] = {}
        self.processing_time = ProcessingTime()      # when to ask first about a sent invoice (polling.py)
        self._shown: set[int] = set()                 # PROCESSING invoices whose state file says so

    def schedule(self, key: int, delay: float) -> None:
        self._polls[key] = (self.ledger.now() + dt.timedelta(seconds=delay), delay)

    def _due(self, key: int) -> bool:
        entry = self._polls.get(key)
        return entry is None or entry[0] <= self.ledger.now()

    def _later(self, key: int, cap: float = MAX_POLL) -> None:
        delay = min(cap, self._polls.get(key, (None, FIRST_POLL / 2))[1] * 2)
        self.schedule(key, delay)

    def next_wake(self) -> float | None:
        if not self._polls:
            return None
        soonest = min(due for due, _ in self._polls.values())
        return max(0.0, (soonest - self.ledger.now()).total_seconds())

    async def has_work(self) -> bool:
        """Anything online that KSeF is working on, or a session to close or follow."""
        if self._polls or self.channel.retired:
            return True
        if await self.store.invoices.ids_in(self.company, [S.IN_DOUBT, S.PROCESSING, S.ACCEPTED, S.UPO_SAVED],
                                            "online"):
            return True
        return bool(await self.store.sessions.unfinished(self.company, "online"))

    async def session(self, session_id: int | None) -> SessionRow | None:
        if session_id is None:
            return None
        found = self._sessions.get(session_id)
        if found is None:
            found = await self.store.sessions.get(session_id)
            if found is not None:
                self._sessions[session_id] = found
        return found

    async def step(self) -> Failure | None:
        """One round over everything this company is waiting for; a Failure asks for a company hold."""
        for part in (self.resolve_in_doubt, self.poll_processing, self.finish_accepted, self.follow_sessions):
            try:
                await part()
            except KsefError as exc:
                failure = classify(exc)
                self.channel.observe(failure)          # for the availability monitor (issue #11)
                self.log.warning("outbox.track_failed", step=part.__name__, code=failure.code,
                                     error=failure.message)
                if failure.verdict == "hold":
                    return failure
        return None

    # --- invoices ---------------------------------------------------------------------------------

    async def resolve_in_doubt(self) -> None:
        ids = await self.store.invoices.ids_in(self.company, [S.IN_DOUBT], "online")
        rows = await self.store.invoices.get_many(ids)
        by_session: dict[int, list[InvoiceRow]] = {}
        for row in rows:
            if row.session_id is not None and self._due(-row.id):
                by_session.setdefault(row.session_id, []).append(row)
        for session_id, waiting in by_session.items():
            session = await self.session(session_id)
            if session is None:
                continue
            try:
                listed = await self.connection.context.sessions.invoices(session.reference, page_size=1000)
            except KsefException as exc:
                if 21173 not in exc.codes:       # "no such session": then certainly not in it
                    raise
                listed = []
            for row in waiting:
                await self._resolve(row, session, [i for i in listed if i.invoice_hash == row.sha256])

    async def _resolve(self, row: InvoiceRow, session: SessionRow, matches: list[SessionInvoice]) -> None:
        if matches:
            best = next((m for m in matches if m.status.code == 200), matches[-1])
            await self.ledger.move(row, S.PROCESSING, from_state=S.IN_DOUBT, invoice_ref=best.reference_number,
                                   status_code=best.status.code,
                                   detail={"resolvedBy": "session invoice list", "reference": best.reference_number})
            self.log.info("outbox.in_doubt_found", file=row.file_name, invoice=row.id, reference=best.reference_number)
            self._polls.pop(-row.id, None)
            self.schedule(row.id, 0)
            return
        age = (self.ledger.now() - row.updated_at).total_seconds()
        if age < IN_DOUBT_GRACE:
            self.schedule(-row.id, IN_DOUBT_GRACE - age)
            return
        await self.ledger.move(row, S.QUEUED, from_state=S.IN_DOUBT, detail={
            "resolvedBy": "session invoice list", "found": False, "session": session.reference})
        self.log.info("outbox.in_doubt_not_received", file=row.file_name, invoice=row.id, session=session.reference)
        self._polls.pop(-row.id, None)

    async def poll_processing(self) -> None:
        """Every due PROCESSING invoice: its status and its UPO from the answer's link (a few at once,
        POLL_CONCURRENCY), then the accepted ones of a session as one group, as a batch's are
        (outcomes.accept_many: result files and UPOs written in threads, one flush of the files, one commit). One
        at a time, a trickle of many invoices waited on each one's round trips and commits in turn. The first
        KsefError is raised once the rest is done, as step() expects."""
        ids = await self.store.invoices.ids_in(self.company, [S.PROCESSING], "online")
        rows = [r for r in await self.store.invoices.get_many([i for i in ids if self._due(i)])
                if r.invoice_ref and self._first_ask_due(r)]
        errors: list[KsefError] = []
        answers: list[tuple[InvoiceRow, SessionRow, SessionInvoice]] = []
        upos: dict[int, bytes] = {}     # fetched by the task that got the link: one round of round trips, not two

        async def status(row: InvoiceRow) -> None:
            session = await self.session(row.session_id)
            if session is None or row.invoice_ref is None:
                return
            # Scheduled before asking: if this one fails, the next round starts with the others, not with it.
            self._later(row.id)
            invoice = await self.connection.context.sessions.invoice(session.reference, row.invoice_ref)
            answers.append((row, session, invoice))
            if invoice.status.code == 200 and invoice.upo_download_url:
                with contextlib.suppress(KsefError):       # _upos fetches it the usual way then
                    upos[row.id] = await self.connection.context.sessions.download_presigned_upo(
                        invoice.upo_download_url)

        try:
            await self._each(rows, status, errors)
            accepted: dict[int, list[tuple[InvoiceRow, SessionInvoice]]] = {}
            for row, session, invoice in answers:
                if not invoice.is_final:
                    self._show_processing(row, session)
                    continue
                self._polls.pop(row.id, None)
                self._shown.discard(row.id)
                self.processing_time.observe(invoice)
                if invoice.status.code == 200:
                    accepted.setdefault(session.id, []).append((row, invoice))
                    continue
                try:
                    done = await self.outcomes.apply(row, invoice, session)
                    if done is not None:
                        await self._upo(done)
                except KsefError as exc:
                    errors.append(exc)
            for session_id, items in accepted.items():
                owner = await self.session(session_id)
                assert owner is not None
                # The UPOs fetched with the answers go with the other result files, in the same flushes and
                # thread hop (outcomes.accept_many, as a batch's do; issue #16: a second pass was two more syncfs
                # and a hop per group); only those missing are fetched again.
                group = await self.outcomes.accept_many(items, owner, {row.id: upos[row.id] for row, _ in items
                                                                       if row.id in upos})
                await self.outcomes.finish([item.row for item in group if item.upo_saved])
                await self._upos([item for item in group if not item.upo_saved])
        finally:
            self.outcomes.forget_listings()
        if errors:
            raise errors[0]

    def _show_processing(self, row: InvoiceRow, session: SessionRow) -> None:
        """NAME.state.json says "in KSeF" once KSeF said it is still working on it (online.py writes none for
        the send itself, which usually lasts milliseconds); once per invoice."""
        if row.id not in self._shown:
            self._shown.add(row.id)
            self.ledger.show(row, {"sessionReferenceNumber": session.reference})

    def _first_ask_due(self, row: InvoiceRow) -> bool:
        """A PROCESSING invoice seen for the first time is first asked about when KSeF usually has its verdict,
        counted from the send (polling.py); then `_later` doubles the wait. True when it is due now."""
        if row.id not in self._polls:
            wait, step = self.processing_time.first()
            self._polls[row.id] = (row.updated_at + dt.timedelta(seconds=wait), step)
        return self._due(row.id)

    async def _each(self, items: list[Any], work: Callable[[Any], Awaitable[None]], errors: list[KsefError]) -> None:
        """`work` for every item, POLL_CONCURRENCY at a time; KsefErrors collected (the rest go on), anything
        else cancels the others and is raised as itself."""
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(item: Any) -> None:
            async with gate:
                try:
                    await work(item)
                except KsefError as exc:
                    errors.append(exc)

        try:
            async with asyncio.TaskGroup() as group:
                for item in items:
                    group.create_task(one(item))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _upos(self, accepted: list[Accepted], prefetched: dict[int, bytes] | None = None) -> None:
        """The UPOs of a group of accepted invoices; one commit for those fetched, the others stay ACCEPTED
        and finish_accepted tries them again later."""
        fetched: list[tuple[InvoiceRow, bytes]] = []
        if not accepted:
            return

        async def fetch(item: Accepted) -> None:
            try:
                xml = (prefetched or {}).get(item.row.id)
                fetched.append((item.row, xml or await self.outcomes.fetch_upo(item.row, item.session_reference,
                                                                               item.upo_url)))
            except KsefError as exc:
                self.log.warning("outbox.upo_failed", file=item.row.file_name, error=str(exc))
                self.ledger.show(item.row, {"ksefNumber": item.row.ksef_number})
                self._later(item.row.id)

        await self._each(accepted, fetch, [])
        await self.outcomes.save_upos(fetched)
        await self.outcomes.finish([row for row, _ in fetched])

    async def _upo(self, accepted: Accepted) -> None:
        row = accepted.row
        try:
            xml = await self.outcomes.fetch_upo(row, accepted.session_reference, accepted.upo_url)
        except KsefError as exc:
            self.log.warning("outbox.upo_failed", file=row.file_name, invoice=row.id, error=str(exc))
            self._later(row.id)
            return
        await self.outcomes.save_upo(row, xml)
        await self.outcomes.finish([row])

    async def finish_accepted(self) -> None:
        """ACCEPTED or UPO_SAVED online invoices left by a crash or a failed UPO download."""
        await self.ledger.done(await self.store.invoices.ids_in(self.company, [S.UPO_SAVED], "online"))
        ids = await self.store.invoices.ids_in(self.company, [S.ACCEPTED], "online")
        rows = await self.store.invoices.get_many([i for i in ids if self._due(i)])
        for row in rows:
            if row.result_name and self.outcomes.files.has_upo(row.result_name):
                await self.outcomes.save_upo(row, (self.outcomes.company.folders.sent /
                                                   f"{row.result_name}.upo.xml").read_bytes())
                await self.outcomes.finish([row])
                continue
            session = await self.session(row.session_id)
            if session is None or row.ksef_number is None:
                continue
            self.schedule(row.id, MAX_POLL)      # if this fails, try again later
            xml = await self.outcomes.fetch_upo(row, self.outcomes.upo_session(row, session.reference), None)
            await self.outcomes.save_upo(row, xml)
            await self.outcomes.finish([row])
            self._polls.pop(row.id, None)

    # --- sessions -------------------------------------------------------------------------------------

    async def follow_sessions(self) -> None:
        await self.channel.close_retired()
        for session in await self.store.sessions.unfinished(self.company, "online"):
            key = -(1_000_000_000 + session.id)
            if session.state == T.OPEN:
                current = self.channel.current
                mine = current is not None and current.id == session.id
                if not mine and not self.channel.in_flight.get(session.id):
                    await self.channel.close_row(session, "left open")   # from before a restart, or replaced
                continue
            if not self._due(key):
                continue
            if session.state == T.CLOSING:
                await self.channel.close_row(session, "retry")
                continue
            status = await self.connection.context.sessions.status(session.reference)
            code = status.status.code
            if code in (100, 150, 170):
                self._later(key, SESSION_POLL_MAX)
                continue
            self._polls.pop(key, None)
            if code == 200:
                for reference, xml in await self.connection.context.sessions.session_upo(session.reference, status):
                    await self.store.sessions.save_upo(session.id, reference, xml)
                await self.store.sessions.transition(session.id, T.CLOSED, T.DONE, status_code=code)
                self.log.info("outbox.session_upo_saved", session=session.reference)
            else:
                await self.store.sessions.transition(session.id, T.CLOSED, T.FAILED, status_code=code,
                                                         last_error={"description": status.status.description})
            self._sessions.pop(session.id, None)
