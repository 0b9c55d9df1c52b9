"""The backlog: batch sessions of at most `batch_max_invoices` (PROTOCOL.md §5; issue #5 item 4).

KSeF processes nothing of a batch until it is closed, so the order that makes a crash harmless is:

    archive built on disk -> POST /sessions/batch -> session row (OPEN) + invoices SUBMITTING (one commit)
    -> parts uploaded -> CLOSING persisted -> POST close -> CLOSED -> wait -> per-invoice results

A restart finds an OPEN batch session: never closed, so never processed; it is abandoned and its
invoices queued again. CLOSING: the close may have arrived; the session's status says, and the close is
repeated if not (a repeat of a close that did arrive answers 21180, which counts as closed). CLOSED:
results are read from KSeF by the session reference alone; each invoice is matched by the file name it
had in the archive (`<invoice id>_<name>`), then by hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ksefd import heap, spool
from ksefd.config import Company
from ksefd.i18n import _
from ksefd.ksef import (
    IN_PROGRESS,
    BatchBuildError,
    BatchInvoice,
    BatchOptions,
    BatchSender,
    KsefError,
    KsefException,
    OpenedBatch,
    PreparedBatch,
    SessionInvoice,
    SessionStatus,
    prepare_batch_async,
)
from ksefd.store import InvoiceRow, InvoiceState, SessionRow, SessionState, Store

from ..connection import CompanyConnection
from ..failures import Failure, classify, next_attempt
from .files import OutboxFiles
from .ledger import Ledger
from .outcomes import Outcomes
from .showing import LateShow

S = InvoiceState
T = SessionState
P = TypeVar("P")
UPO_DOWNLOADS = 8
UPO_GROUPS = 4            # groups of a page in flight (_results): one fetching its UPOs, the others writing
# Sessions whose results are read at once (one company). A session's slot in the worker ends at its close
# (KSeF processes while we wait), so a backlog's later pieces are closed while earlier ones' results are still
# being read; the results go session by session in the order of closing (an asyncio.Semaphore is FIFO). One at
# a time: two at once competed for the same CPU and disk (10 000 backlog, 6 alternating runs on a quiet machine:
# median 24.9 s and 1.73 ms per invoice with one, 25.9 s and 1.82 ms with two; simulator floor 18.2-19.1 s).
RESULTS_AT_ONCE = 1
OPEN = (S.SUBMITTING, S.PROCESSING, S.ACCEPTED, S.UPO_SAVED)      # a batch's invoices whose results are due
RESULT_GROUP = 250          # invoices whose result files share one directory fsync and one commit
CLOSE_GONE = frozenset({21208, 21205, 21157})     # the session was cancelled or can never be closed
# Status polls after close: KSeF processes ~1 000 invoices a second, so a 1.5x back-off to 5 s left a finished
# session unseen for up to a few seconds. Capped at 1 s, a 10 000-invoice session (~11 s) costs ~15 polls of
# sessionMisc (120/min, 1200/h per context, PROTOCOL.md §14): a small share even with a batch every few minutes.
POLL = BatchOptions(poll_first=0.2, poll_factor=1.25, poll_max=1.0, invoice_page_size=1000)
# A closed batch's invoices get SUBMITTING state files only once KSeF has had it this long (wall seconds, from
# the close; showing.py). Until then their files say QUEUED if they had waited long enough to get one
# (ledger.SHOW_QUEUED_AFTER), else there is none yet: an older state, as a crash may leave (files.py), and the
# batch's results remove them. The state file is informational (DESIGN.md, the folder contract: the ERP reads the
# state of an invoice that waits); SQLite holds the SUBMITTING step, committed before the upload, as before.
SHOW_AFTER = 2.0


def entry_name(row: InvoiceRow) -> str:
    """The invoice's name inside the archive (KSeF echoes it as invoiceFileName): unique and readable."""
    return f"{row.id:08d}_{row.file_name}"


def entry_id(name: str | None) -> int | None:
    """The invoice id an archive name (`entry_name`) carries; None for a name ksefd did not make."""
    number, underscore, _ = (name or "").partition("_")
    return int(number) if underscore and number.isascii() and number.isdigit() else None


class BatchRunner:
    def __init__(self, company: Company, ledger: Ledger, outcomes: Outcomes, files: OutboxFiles,
                 connection: CompanyConnection, *, work_dir: Path, heavy: asyncio.Semaphore, log: Any) -> None:
        self.company = company
        self.ledger = ledger
        self.outcomes = outcomes
        self.files = files
        self.connection = connection
        self.work_dir = work_dir              # archives being built (never needed after a restart)
        self.heavy = heavy                    # CPU-heavy work shared by all companies
        self.log = log
        self.active: set[int] = set()        # batch sessions a task is handling now
        self._upo_limit = asyncio.Semaphore(UPO_DOWNLOADS)   # shared by the groups of the pipeline
        self._fetch_turn = asyncio.Lock()                     # one group's UPOs fetched at a time (_accept_group)
        self._reading = asyncio.Semaphore(RESULTS_AT_ONCE)   # sessions whose results are read
        # What each open saw, for the availability monitor (None: KSeF answered). Set by the worker.
        self.observe: Callable[[Failure | None], None] = lambda failure: None

    @property
    def sender(self) -> BatchSender:
        return self.connection.context.batch(options=dataclasses.replace(POLL, features=self.connection.features))

    @property
    def store(self) -> Store:
        return self.ledger.store

    # --- a new batch --------------------------------------------------------------------------------

    async def send(self, rows: list[InvoiceRow], *, offline_mode: bool = False,
                   closed: Callable[[], None] = lambda: None) -> Failure | None:
        """Send QUEUED invoices (or OFFLINE ones, `offline_mode`: the session's offlineMode applies to all of
        them, so the two never share a session, PROTOCOL.md §8.2) in one batch session. Returns a Failure
        when the company must go on hold. `closed` is called once the session is closed (KSeF processes it
        from then on; the caller may start the next one) and before its results are waited for. Once the
        session is uploaded `rows` is emptied: its results come from SQLite, and a backlog's pieces in flight
        (up to four of 2 500) held their rows to the end (issue #16, the 10 000 backlog's peak RSS)."""
        spool.ensure_private_dir(self.work_dir)        # archives hold plain invoices: only ksefd reads them
        workdir = self.work_dir / secrets.token_hex(6)
        try:
            invoices = [BatchInvoice(entry_name(r), Path(r.work_path or "")) for r in rows]
            async with self.heavy:
                prepared = await prepare_batch_async(invoices, workdir)
        except (BatchBuildError, OSError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            return await self._failed(rows, rows[0].state, KsefError(f"the batch archive could not be built: {exc}"))
        del invoices
        try:
            outcome = await self._open_upload_close(rows, prepared, offline_mode)
        finally:
            prepared.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
        del prepared
        if isinstance(outcome, tuple):
            # Uploaded and CLOSING: followed to its results with nothing of the send held but the rows as they
            # are now, for their state files. No await since the send let go of it, so a resume cannot take it
            # meanwhile.
            session, submitted = outcome
            del outcome
            rows.clear()        # the caller's piece, QUEUED rows no longer true: not held while KSeF works
            return await self.close_and_track(session, submitted, closed=closed)
        return outcome

    async def _open_upload_close(self, rows: list[InvoiceRow], prepared: PreparedBatch, offline_mode: bool
                                 ) -> Failure | tuple[SessionRow, list[InvoiceRow]] | None:
        sender = self.sender
        try:
            opened = await sender.open(prepared, offline_mode=offline_mode)
        except KsefError as exc:
            return await self._failed(rows, rows[0].state, exc)
        self.observe(None)
        session = await self.store.sessions.add(self.company.name, "batch", opened.reference_number,
                                                opened_at=self.ledger.now(), offline_mode=offline_mode)
        self.active.add(session.id)          # this task owns it; a resume must not track it too
        try:
            return await self._upload_close(rows, prepared, opened, session)
        finally:
            self.active.discard(session.id)

    async def _upload_close(self, rows: list[InvoiceRow], prepared: PreparedBatch, opened: OpenedBatch,
                            session: SessionRow) -> Failure | tuple[SessionRow, list[InvoiceRow]] | None:
        """Returns the session once it is CLOSING with its invoices (the caller follows it), or what a failed
        upload gives. The state files say SUBMITTING only after the close (`_close_and_track`): written before
        the upload, they kept KSeF waiting ~1 s per 2 500 invoices for something no durability needs (the
        commit alone says which invoices the session holds)."""
        sender = self.sender
        ids = [r.id for r in rows]
        submitted = await self.ledger.move_many(
            ids, rows[0].state, S.SUBMITTING, state_files=False, known=rows if rows[0].state == S.QUEUED else None,
            session_id=session.id, mode="batch", next_attempt_at=None, detail={"session": opened.reference_number})
        self.log.info("outbox.batch_opened", session=opened.reference_number, invoices=len(rows),
                          parts=len(prepared.parts))
        heap.give_back()            # the archive's building and the step's rows (ksefd.heap)
        try:
            await sender.upload(prepared, opened)
        except KsefError as exc:
            failure = await self._failed(await self.store.invoices.get_many(ids), S.SUBMITTING, exc)
            await self.store.sessions.transition(session.id, T.OPEN, T.ABANDONED, detail={"error": str(exc)})
            return failure
        return await self.store.sessions.transition(session.id, T.OPEN, T.CLOSING), submitted

    # --- closing and results (also after a restart) ------------------------------------------------------

    async def close_and_track(self, session: SessionRow, submitted: list[InvoiceRow] | None = None, *,
                              closed: Callable[[], None] = lambda: None) -> Failure | None:
        """Finish a batch session from its state in SQLite; one task per session at a time. `submitted`: the
        invoices just uploaded, whose state files are written once the close is sent (KSeF works meanwhile).
        `closed`: see `send`."""
        if session.id in self.active:
            return None
        self.active.add(session.id)
        try:
            return await self._close_and_track(session, submitted or [], closed)
        finally:
            self.active.discard(session.id)

    async def _close_and_track(self, session: SessionRow, submitted: list[InvoiceRow],
                               closed: Callable[[], None]) -> Failure | None:
        shown = {"sessionReferenceNumber": session.reference}
        if session.state == T.CLOSING:
            try:
                status = await self.connection.context.sessions.status(session.reference)
                if status.status.code == 100:      # KSeF has not seen the close yet
                    await self.sender.close(session.reference)
            except KsefException as exc:
                if CLOSE_GONE.intersection(exc.codes):
                    await self._session_failed(session, f"KSeF cancelled the batch session: {exc}")
                    return None
                await self.ledger.show_many(submitted, shown)
                return classify_for_company(exc)
            except KsefError as exc:
                await self.ledger.show_many(submitted, shown)
                return classify_for_company(exc)
            session = await self.store.sessions.transition(session.id, T.CLOSING, T.CLOSED,
                                                           closed_at=self.ledger.now())
        closed()                # the next piece need not wait for this one's results (perf-big3)
        # From the close on, also while the piece waits for its turn to be read (showing.py).
        late = LateShow(self.ledger, submitted, shown, SHOW_AFTER) if submitted else None
        try:
            async with self._reading:
                return await self.track(session, late)
        finally:
            if late is not None:
                await late.stop()

    async def _wait(self, session: SessionRow, late: LateShow | None) -> SessionStatus:
        """KSeF's processing of the closed session; `late`: the invoices' SUBMITTING state files, stopped when
        the wait ends (before any result is handled, so never after an invoice's end)."""
        waiting = asyncio.ensure_future(self.sender.wait(session.reference))
        try:
            try:
                return await waiting
            except KsefError:       # the session waits for a later round: its files say so meanwhile
                if late is not None:
                    await late.show_all()
                raise
        finally:
            waiting.cancel()        # cancelled meanwhile: the poll stops with us (a no-op once it is done)
            if late is not None:    # the rest keep what they said: no state file once results are handled
                await late.stop()

    async def track(self, session: SessionRow, late: LateShow | None = None) -> Failure | None:
        """The session's results a page of KSeF's list at a time (PROTOCOL.md §4.5, continuation tokens): each
        page's invoices are read by the ids their archive names carry (`entry_name`), so nothing proportional to
        the batch's size is held (a 10 000 backlog held its whole list and every row twice). One pipeline runs
        across the pages: KSeF lists the next page while this one's files are written, and the UPOs of a page's
        last groups are fetched while the next page's first groups are stored (the pipeline used to drain at
        every page). Invoices no page named are matched by hash among the entries whose names matched nothing
        (normally none), else handled as not processed."""
        try:
            status = await self._wait(session, late)
        except KsefError as exc:
            return classify_for_company(exc)
        handled: set[int] = set()
        unmatched: list[SessionInvoice] = []
        failed: KsefError | None = None
        pages = self.connection.context.sessions.invoice_pages(session.reference, page_size=POLL.invoice_page_size)
        ahead = asyncio.ensure_future(_next_page(pages))
        try:
            async with asyncio.TaskGroup() as group:
                upos = UpoPipeline(group)
                while True:
                    page = await ahead
                    if page is None or isinstance(page, KsefError):
                        failed = page
                        break
                    ahead = asyncio.ensure_future(_next_page(pages))
                    named = {i: item for item in page.invoices if (i := entry_id(item.invoice_file_name)) is not None}
                    rows = [r for r in await self.store.invoices.get_many(list(named))
                            if r.session_id == session.id and r.state in OPEN and r.id not in handled]
                    mine = {r.id for r in rows}
                    unmatched += [item for i, item in named.items() if i not in mine]
                    unmatched += [item for item in page.invoices if entry_id(item.invoice_file_name) is None]
                    handled |= mine
                    await self._results(session, rows, [named[r.id] for r in rows], status, upos)
                    del rows, named, page
                    heap.give_back()        # the page's rows, answers and file work (ksefd.heap)
                if failed is None:
                    rest = [i for i in await self.store.invoices.ids_in_session(session.id, OPEN) if i not in handled]
                    if rest:
                        await self._results(session, await self.store.invoices.get_many(rest), unmatched, status,
                                            upos)
        finally:
            if not ahead.done():
                ahead.cancel()
                await asyncio.wait([ahead])
        if failed is not None:
            return classify_for_company(failed)
        if not await self.store.invoices.ids_in_session(session.id, OPEN):
            await self._session_done(session, status)
        return None

    async def _results(self, session: SessionRow, rows: list[InvoiceRow], listed: list[SessionInvoice],
                       status: SessionStatus, upos: UpoPipeline) -> None:
        by_name = {i.invoice_file_name: i for i in listed if i.invoice_file_name}
        by_hash: dict[str, SessionInvoice] = {}
        for item in listed:
            by_hash.setdefault(item.invoice_hash, item)
        found = {r.id: by_name.get(entry_name(r)) or by_hash.get(r.sha256) for r in rows}
        waiting = [r for r in rows if r.state == S.SUBMITTING and found[r.id] is not None]
        if waiting:
            moved = await self.ledger.move_many([r.id for r in waiting], S.SUBMITTING, S.PROCESSING,
                                                state_files=False, known=waiting)
            by_id = {m.id: m for m in moved}            # a dict: a scan per row was quadratic (10 000: ~5 s)
            rows = [by_id.get(r.id, r) for r in rows]
        accepted: list[tuple[InvoiceRow, str, str | None]] = []
        plain: list[tuple[InvoiceRow, SessionInvoice]] = []      # accepted by KSeF: handled in groups below
        saved: list[InvoiceRow] = []
        for row in rows:
            invoice = found[row.id]
            if invoice is None:
                if row.state == S.SUBMITTING and status.status.code not in IN_PROGRESS:
                    await self._not_processed(row, status)
                continue
            if row.state == S.PROCESSING and invoice.is_final and invoice.status.code == 200:
                plain.append((row, invoice))
            elif row.state == S.PROCESSING and invoice.is_final:
                done = await self.outcomes.apply(row, invoice, session)
                if done is not None:
                    accepted.append((done.row, done.session_reference, done.upo_url))
            elif row.state == S.ACCEPTED:
                reference = self.outcomes.upo_session(row, session.reference)
                accepted.append((row, reference, invoice.upo_download_url if reference == session.reference
                                 else None))
            elif row.state == S.UPO_SAVED:
                saved.append(row)
        if saved:
            await self.ledger.done([r.id for r in saved])
        await self._upos(accepted)
        # Group by group: the group's UPOs fetched, then all its result files written together (three flushes
        # of the file system, outcomes.accept_many) and its commits, so results appear progressively. A
        # pipeline of whole groups across the pages of KSeF's list (UpoPipeline): while one group's UPOs are
        # fetched (network, one group at a time), the groups before it write their files (disk); at most
        # UPO_GROUPS groups at once, so memory stays bounded.
        for start in range(0, len(plain), RESULT_GROUP):
            await upos.add(self._accept_group(plain[start:start + RESULT_GROUP], session))
        self.outcomes.forget_listings()

    async def _accept_group(self, items: list[tuple[InvoiceRow, SessionInvoice]], session: SessionRow) -> None:
        """A group of invoices KSeF accepted: their UPOs fetched first (by the links in KSeF's list), then every
        result file at once and DONE (outcomes.accept_many). One whose UPO could not be fetched is left
        ACCEPTED, with its state file saying so; the next round fetches it (the ACCEPTED path of `_results`)."""
        limit = self._upo_limit
        upos: dict[int, bytes] = {}
        left = iter(items)

        async def fetcher() -> None:        # a few fetchers through the group, not a task per invoice
            for row, invoice in left:
                async with limit:
                    try:
                        upos[row.id] = await self.outcomes.fetch_upo(row, session.reference,
                                                                     invoice.upo_download_url, invoice.ksef_number)
                    except KsefError as exc:
                        self.log.warning("outbox.upo_failed", file=row.file_name, invoice=row.id, error=str(exc))

        async with self._fetch_turn, asyncio.TaskGroup() as group:    # in turn: the next group's UPOs come
            for _ in range(min(UPO_DOWNLOADS, len(items))):           # while this one's files are written
                group.create_task(fetcher())
        accepted = await self.outcomes.accept_many(items, session, upos)
        for item in accepted:
            if not item.upo_saved:
                self.ledger.show(item.row, {"ksefNumber": item.row.ksef_number})
        await self.outcomes.finish([item.row for item in accepted if item.upo_saved])

    async def _upos(self, accepted: list[tuple[InvoiceRow, str, str | None]]) -> None:
        for start in range(0, len(accepted), RESULT_GROUP):
            await self._upo_group(accepted[start:start + RESULT_GROUP])

    async def _upo_group(self, accepted: list[tuple[InvoiceRow, str, str | None]]) -> None:
        limit = self._upo_limit
        fetched: list[tuple[InvoiceRow, bytes]] = []

        async def one(row: InvoiceRow, session_reference: str, url: str | None) -> None:
            async with limit:
                try:
                    assert row.result_name is not None
                    if not self.files.has_upo(row.result_name):
                        fetched.append((row, await self.outcomes.fetch_upo(row, session_reference, url)))
                    else:
                        fetched.append((row, (self.company.folders.sent / f"{row.result_name}.upo.xml").read_bytes()))
                except KsefError as exc:    # stays ACCEPTED; the next round fetches it again
                    self.log.warning("outbox.upo_failed", file=row.file_name, invoice=row.id, error=str(exc))
                    self.ledger.show(row, {"ksefNumber": row.ksef_number})

        async with asyncio.TaskGroup() as group:
            for row, session_reference, url in accepted:
                group.create_task(one(row, session_reference, url))
        await self.outcomes.save_upos(fetched)
        await self.outcomes.finish([row for row, _ in fetched])

    async def _not_processed(self, row: InvoiceRow, status: SessionStatus) -> None:
        """KSeF's session ended without listing this invoice (e.g. a package error): send it again later."""
        error = {"stage": "ksef", "code": f"ksef-session-{status.status.code}", "message": _(
                     "KSeF ended the session without this invoice ({code}: {description}); ksefd sends it again "
                     "later.", code=str(status.status.code), description=str(status.status.description)),
                 "details": list(status.status.details or [])}
        attempts = row.attempts + 1
        await self.ledger.move(row, S.DEFERRED, from_state=S.SUBMITTING, attempts=attempts, last_error=error,
                               next_attempt_at=next_attempt(self.ledger.now(), self.company.sending, attempts),
                               detail=error)

    async def _session_done(self, session: SessionRow, status: SessionStatus) -> None:
        if status.status.code == 200:
            try:
                for reference, xml in await self.sender.session_upo(session.reference, status):
                    await self.store.sessions.save_upo(session.id, reference, xml)
            except KsefError as exc:
                self.log.warning("outbox.session_upo_failed", session=session.reference, error=str(exc))
                return
            await self.store.sessions.transition(session.id, T.CLOSED, T.DONE, status_code=200)
        else:
            await self.store.sessions.transition(session.id, T.CLOSED, T.FAILED,
                                                     status_code=status.status.code,
                                                     last_error={"description": status.status.description})
        self.log.info("outbox.batch_finished", session=session.reference, code=status.status.code)

    async def _session_failed(self, session: SessionRow, why: str) -> None:
        # Invoices first, the session last: a crash in between leaves an unfinished session to redo.
        await self.requeue(session, {"error": why})
        await self.store.sessions.transition(session.id, session.state, T.FAILED, last_error={"error": why})

    async def abandon(self, session: SessionRow) -> None:
        """An OPEN batch session from before a restart: never closed, so KSeF will never process it."""
        await self.requeue(session, {"reason": "batch abandoned"})
        await self.store.sessions.transition(session.id, T.OPEN, T.ABANDONED,
                                                 detail={"reason": "upload interrupted by a restart"})

    async def requeue(self, session: SessionRow, detail: dict[str, str]) -> None:
        """The session's SUBMITTING invoices back to QUEUED: KSeF never processed that session."""
        ids = [r.id for r in await self.store.invoices.in_session(session.id) if r.state == S.SUBMITTING]
        await self.ledger.move_many(ids, S.SUBMITTING, S.QUEUED, detail=detail)

    async def _failed(self, rows: list[InvoiceRow], state: InvoiceState, exc: KsefError) -> Failure | None:
        failure = classify(exc)
        self.observe(failure)
        self.log.warning("outbox.batch_failed", verdict=failure.verdict, code=failure.code, error=failure.message,
                             invoices=len(rows))
        for row in rows:
            if failure.verdict == "hold":
                await self.ledger.hold_one(row, failure, "ksef-batch")
                continue
            attempts = row.attempts + 1
            await self.ledger.move(row, S.DEFERRED, from_state=state, last_error=failure.as_error("ksef-batch"),
                                   attempts=attempts, next_attempt_at=next_attempt(
                                       self.ledger.now(), self.company.sending, attempts, failure.retry_after))
        return failure if failure.verdict == "hold" else None


class UpoPipeline:
    """The groups of one session's results being stored (files, UPOs): at most UPO_GROUPS at once (adding one
    more waits for the oldest), so memory stays bounded whatever the session's size."""

    def __init__(self, group: asyncio.TaskGroup) -> None:
        self.group = group
        self.fetching: list[asyncio.Task[None]] = []

    async def add(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self.fetching) >= UPO_GROUPS:
            await self.fetching.pop(0)
        self.fetching.append(self.group.create_task(work))


async def _next_page(pages: AsyncIterator[P]) -> P | KsefError | None:
    """The next page of a session's list, None after the last; a KsefError is returned, not raised (the caller
    reads it ahead in a task of its own and stops at it)."""
    try:
        return await anext(pages, None)
    except KsefError as exc:
        return exc


def classify_for_company(exc: KsefError) -> Failure | None:
    failure = classify(exc)
    return failure if failure.verdict == "hold" else None
