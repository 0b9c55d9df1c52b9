"""One company's outbox: intake, the sending policy, tracking, holds and recovery after a restart
(issue #5 items 2-6). Companies run side by side (service.py), each in its own tasks, with its own KSeF
context and rate-limit windows, so one company's backlog never starves another's trickle.

Sending policy: with `batch_threshold` or more invoices waiting, batch sessions of at most
`batch_max_invoices` (and the context's cap), in pieces (pieces.py); below it, the
online session. An invoice with an
attachment always goes by batch (online sessions refuse attachments, PROTOCOL.md §4.2). Online sends are
started only while the client's rate limiter would let them through at once, so invoices do not sit in
SUBMITTING for an hour behind `invoiceSend` (180/h); the backlog then grows into a batch instead.

Holds: credentials that cannot be read or are refused, or a missing permission, put the company on hold
(connection.py; store `company_holds`, shown by `ksefd status`): its waiting invoices become HELD, nothing is
sent, and every `hold_retry_seconds` it logs in again with freshly read credential files and tries once more.

The parts and who moves what: intake -> ledger <- channels (online, batch) <- tracker. Only the ledger
moves an invoice from state to state; this class decides which channel gets which invoices and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import traceback
from pathlib import Path
from typing import Any

import structlog

from ksefd import spool
from ksefd.clock import Clock
from ksefd.config import Company
from ksefd.ksef import KsefError, RateLimiter
from ksefd.store import InvoiceRow, InvoiceState, SessionState, Store

from ..availability import KsefAvailability, Verdict
from ..connection import CompanyConnection
from ..failures import Failure, LastingFailure
from ..runtime import IDLE_LOOK_SECONDS, Runtime, wait_for
from .batch import BatchRunner
from .files import OutboxFiles
from .intake import Intake
from .ledger import Ledger
from .offline import OfflineDesk
from .offline_files import OfflineFiles
from .online import OnlineChannel
from .outcomes import Outcomes
from .pieces import batch_sizes, piece_size
from .tracker import Tracker
from .watch import OutboxWatcher

S = InvoiceState
T = SessionState
ONLINE_CONCURRENCY = 10     # online sends at once: as many as KSeF takes in a second (invoiceSend 10/s, PROTOCOL.md §7)
BATCHES_AT_ONCE = 2         # batch sessions being built and uploaded at once; a closed one leaves its slot (_batch)
LOOP_RETRY_SECONDS = 5.0
SEND_WAIT_AT_MOST = 2.0        # seconds the limiter may make an online send wait before we prefer to wait here
SETTLED_CHECK_SECONDS = 0.2    # real time: drain mode confirms "nothing to do" this long after it was seen ...
SETTLED_ROUNDS = 3             # ... this many times in a row (files may be landing)
ACTIVE = (S.CLAIMED, S.CHECKED, S.QUEUED, S.SUBMITTING, S.IN_DOUBT, S.PROCESSING, S.ACCEPTED, S.UPO_SAVED,
          S.DEFERRED, S.OFFLINE)


class OutboxWorker:
    def __init__(self, company: Company, connection: CompanyConnection, store: Store, clock: Clock,
                 limiter: RateLimiter, *, work_dir: Path, batch_dir: Path, heavy: asyncio.Semaphore,
                 settle_seconds: float = 2.0, rescan_interval_seconds: float = 30.0, once: bool = False,
                 watcher: OutboxWatcher | None = None, availability: KsefAvailability | None = None) -> None:
        self.company = company
        self.connection = connection
        self.store = store
        self.clock = clock
        self.limiter = limiter
        self.batch_dir = batch_dir
        self.once = once
        self.watcher = watcher            # the daemon's one watcher of every outbox (None: intake watches its own)
        self.folders_prepared = False     # set by Daemon.start, which prepares every outbox before the watcher
        self.log = structlog.get_logger("ksefd.daemon.outbox").bind(company=company.name)
        self.files = OutboxFiles(company, work_dir)
        self.ledger = Ledger(company.name, store, self.files, clock.now, self.log)
        self.outcomes = Outcomes(company, self.ledger, self.files, connection, self.log)
        self.intake = Intake(company, self.ledger, self.files, clock, settle_seconds=settle_seconds,
                             rescan_interval_seconds=rescan_interval_seconds, heavy=heavy, log=self.log)
        self.channel = OnlineChannel(company, self.ledger, self.outcomes, self.files, connection, self.log)
        self.tracker = Tracker(company.name, self.ledger, self.outcomes, self.channel, connection, self.log)
        self.batches = BatchRunner(company, self.ledger, self.outcomes, self.files, connection, work_dir=batch_dir,
                                   heavy=heavy, log=self.log)
        if watcher is not None:
            watcher.register(company.folders.outbox, self.intake.poke)
        connection.on_hold_change(self._hold_changed)
        connection.on_login(self.channel.forget)
        self.idle = asyncio.Event()            # set while nothing is left to do without a person
        self._online = asyncio.Semaphore(ONLINE_CONCURRENCY)
        self._reserved: set[int] = set()       # invoices a send task holds
        # Offline invoicing (issue #11): the availability of the company's KSeF, the desk that issues invoices
        # offline, and what the channels see of KSeF fed back to the availability monitor.
        self.availability = availability
        self.offline_files = OfflineFiles(company, connection.qr_host)
        self.outcomes.offline_files = self.offline_files
        self.offline = OfflineDesk(company, self.ledger, self.offline_files, availability, clock, self.log,
                                   settle_seconds=settle_seconds, rescan_seconds=rescan_interval_seconds,
                                   reserved=self._reserved)
        if watcher is not None:        # outbox/offline/ too: an offline24 request is seen when it lands
            watcher.register(self.offline.requests, self.ledger.offline_due, create=True)
            self.offline.watcher = watcher
        self._ksef_back = False
        if availability is not None:
            self.channel.observe = self.batches.observe = availability.observe
            availability.on_change(self._availability_changed)
            connection.on_login(lambda: availability.observe(None))     # a login is KSeF answering
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._recovered = False
        self._dispatch_failing = LastingFailure(self.log, "outbox.dispatch_failed")
        self._track_failing = LastingFailure(self.log, "outbox.track_failed")

    @classmethod
    def for_runtime(cls, runtime: Runtime, company: Company, connection: CompanyConnection,
                    watcher: OutboxWatcher | None = None,
                    availability: KsefAvailability | None = None) -> OutboxWorker:
        return cls(company, connection, runtime.store, runtime.clock, runtime.limiter,
                   work_dir=runtime.work_dir(company), batch_dir=runtime.batch_dir(company), heavy=runtime.heavy,
                   settle_seconds=runtime.config.settle_seconds,
                   rescan_interval_seconds=runtime.config.rescan_interval_seconds, once=runtime.once,
                   watcher=watcher, availability=availability)

    # --- the loops ----------------------------------------------------------------------------------

    async def run(self, draining: asyncio.Event) -> None:
        # Started again by `guarded` after a failure: what the cancelled tasks left (a send cut after its
        # intent was recorded, an OPEN batch) is recovered again before anything new is sent.
        self._recovered = False
        if not self.folders_prepared:   # Daemon.start prepared them a moment ago (issue #16: 1 000 outboxes)
            self.files.prepare()
        self.folders_prepared = False   # started again by `guarded`: prepared again
        # Archives of batches a previous run was building: never closed, so never needed (batch.py).
        # Usually there is none: one stat instead of a thread hop for each of 1 000 companies at start.
        if os.path.lexists(self.batch_dir):  # noqa: ASYNC240
            await asyncio.to_thread(shutil.rmtree, self.batch_dir, True)
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self.intake.run(draining, self.watcher), name=f"intake:{self.company.name}")
            group.create_task(self._dispatch_loop(draining), name=f"dispatch:{self.company.name}")
            group.create_task(self._track_loop(draining), name=f"track:{self.company.name}")
            group.create_task(self.offline.run(draining), name=f"offline:{self.company.name}")
        self._group = None
        await self.ledger.show_owed()

    def wake(self) -> None:
        """Look at everything again now (e.g. at the start of the drain)."""
        self.ledger.dispatch_due.set()
        self.ledger.track_due.set()
        self.ledger.offline_due.set()
        self.intake.poke.set()

    def _availability_changed(self, before: Verdict, after: Verdict) -> None:
        """KSeF went down: the desk looks at the waiting invoices now. KSeF is back: log in at once and send the
        offline invoices before new work (PROTOCOL.md §8.1), not after the login backoff."""
        if after.down:
            self.ledger.offline_due.set()
        if (before.down and not after.down) or (after.answers and not before.answers):
            self._ksef_back = True
            self.connection.retry_now()
            self.ledger.dispatch_due.set()

    async def close_online(self) -> None:
        """Graceful shutdown: close the online session (its UPO is fetched after the next start)."""
        if self.connection.current is not None:
            with contextlib.suppress(KsefError):
                await self.channel.close_current("shutdown")

    async def _dispatch_loop(self, draining: asyncio.Event) -> None:
        while not draining.is_set():
            try:
                wait = await self.dispatch_once(draining)
                self._dispatch_failing.cleared()
            except Exception as exc:   # a bug or a full disk must not stop the other companies; logged, retried
                self._dispatch_failing.failed(error=repr(exc), where=traceback.format_exc(limit=-3))
                wait = LOOP_RETRY_SECONDS
            if self.once and await self.settled():
                self.idle.set()
            if await wait_for(self.ledger.dispatch_due, self.clock, wait):
                self.idle.clear()

    async def _track_loop(self, draining: asyncio.Event) -> None:
        """Follows what KSeF is working on. With nothing to follow it sleeps until the ledger wakes it (an invoice
        moved into a state the tracker acts on, a session closed, a new login): no timer ticks while idle."""
        while not draining.is_set():
            wait: float | None = IDLE_LOOK_SECONDS    # not connected yet: the first login (recover) wakes it
            if self.connection.current is not None and self._recovered:
                wait = LOOP_RETRY_SECONDS
                try:
                    failure = await self.tracker.step()
                    if failure is not None:
                        await self.connection.hold(failure)
                    wait = self.tracker.next_wake()
                    if wait is not None:
                        wait = min(wait, LOOP_RETRY_SECONDS)
                    else:
                        wait = LOOP_RETRY_SECONDS if await self.tracker.has_work() else IDLE_LOOK_SECONDS
                    self._track_failing.cleared()
                except Exception as exc:
                    wait = LOOP_RETRY_SECONDS
                    self._track_failing.failed(error=repr(exc), where=traceback.format_exc(limit=-3))
            await wait_for(self.ledger.track_due, self.clock, wait)

    # --- connecting and holds ---------------------------------------------------------------------------

    async def ready(self) -> float | None:
        """Connected, not on hold and recovered: None. Otherwise the seconds to wait before looking again."""
        wait = await self.connection.ready()
        if wait is not None and self.availability is not None and self.connection.last_failure is not None:
            self.availability.observe(self.connection.last_failure)      # what the failed login saw
        if wait is not None:
            return wait
        if not self._recovered:
            await self.recover()
        return None

    async def _hold_changed(self, failure: Failure | None) -> None:
        # Under the desk's lock: the desk issues QUEUED, DEFERRED and HELD invoices offline, and a move of the
        # whole group must not meet one of them half-way (StateConflict would undo the release).
        async with self.offline.lock:
            if failure is None:
                released = await self.ledger.release_held()
                self.ledger.track_due.set()     # what KSeF was working on before the hold is followed again
                self.log.info("outbox.held_invoices_released", invoices=released)
            else:
                await self.ledger.hold_waiting(failure, self._reserved)

    # --- recovery after a restart ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Pick up what a previous run (maybe killed) left, before sending anything new."""
        store, name = self.store, self.company.name
        for session in await store.sessions.unfinished(name, "batch"):
            if session.state == T.OPEN:
                await self.batches.abandon(session)
        for row in await store.invoices.in_state(name, S.SUBMITTING):
            used = await store.sessions.get(row.session_id) if row.mode == "batch" and row.session_id else None
            if used is not None and used.state in (T.ABANDONED, T.FAILED):   # safety net
                await self.batches.requeue(used, {"reason": f"batch session {used.state}"})
        for row in await store.invoices.in_state(name, S.SUBMITTING):
            if row.mode != "batch":
                await self.ledger.move(row, S.IN_DOUBT, detail={"reason": "found SUBMITTING after a restart"})
        self._recovered = True
        self.wake()

    # --- dispatching ----------------------------------------------------------------------------------

    async def dispatch_once(self, draining: asyncio.Event) -> float | None:
        wait = await self.ready()
        if wait is not None:
            return wait
        if self._ksef_back:
            self._ksef_back = False
            await self.ledger.retry_offline_now()
        # Under the desk's lock: an invoice is issued offline or picked for sending, never both at once.
        async with self.offline.lock:
            await self.offline.issue_special()
            await self._promote_deferred()
            await self.ledger.back_offline(await self.store.offline.queued_offline_ids(self.company.name))
        self._resume_batches_soon()
        verdict = self.offline.verdict()
        if verdict.down and not verdict.answers:
            # KSeF is down (announced, or it stopped answering): nothing is sent into the void, where each send
            # would end in doubt; the desk issues waiting invoices offline. Sending resumes when the verdict
            # changes (Latarnia, or the availability probe seeing KSeF answer again).
            return LOOP_RETRY_SECONDS
        if await self._send_offline():
            # Offline invoices first: new work waits until they are all on their way; when the limiter holds
            # them back, look again when it lets the next one through, not in a tight loop.
            return max(0.2, self.limiter.delay(self.connection.context.context.key, "invoiceSend"))
        if verdict.down:            # an announced outage in which KSeF answers: new invoices are issued offline
            return LOOP_RETRY_SECONDS
        now = self.clock.now()
        # The waiting invoices no task holds, by id. `_reserved` also holds the invoices of running batches,
        # no longer QUEUED: a count of QUEUED minus len(_reserved) hid a backlog's next piece until another
        # batch ended (with pieces: ~8 s of a 10 000 backlog).
        waiting = len(await self._free_queued(now))
        cap = piece_size(self._batch_cap(), waiting)
        if self.intake.busy and waiting < cap:
            return 0.2               # a drop is still being claimed: see the whole backlog before choosing
        if waiting >= self.company.sending.batch_threshold and self._batches_running() >= BATCHES_AT_ONCE:
            return await self._idle([], draining)    # a batch slot frees: its task's end wakes this loop
        async with self.offline.lock:
            # Intake may have queued a technical correction or an outbox/offline/ request since the first look:
            # those are the desk's (§8.4), never plain online sends.
            await self.offline.issue_special()
            # Ids and kinds first; rows only of the pieces started now (a 10 000 backlog's other pieces wait
            # in SQLite, not in memory: issue #16, peak RSS).
            queued = [k for k in await self.store.invoices.due_kinds(self.company.name, S.QUEUED, now)
                      if k[0] not in self._reserved]
            attachments = [i for i, attached in queued if attached]
            plain = [i for i, attached in queued if not attached]
            by_batch = attachments + (plain if len(plain) >= self.company.sending.batch_threshold else [])
            for size in batch_sizes(len(by_batch), cap, whole_only=self.intake.busy):
                if self._batches_running() >= BATCHES_AT_ONCE:
                    break
                piece = await self._queued_rows(by_batch[:size])
                if piece:
                    self._start(self._batch(piece), "batch", piece)
                by_batch = by_batch[size:]
            online = [] if len(plain) >= self.company.sending.batch_threshold else await self._queued_rows(plain)
            self._reserved |= {r.id for r in online}       # the desk leaves them alone from now on
        await self._send_online(online)
        return await self._idle(queued, draining)

    async def _queued_rows(self, ids: list[int]) -> list[InvoiceRow]:
        """The rows of `ids` still QUEUED (under offline.lock nothing else takes them; the check is a guard)."""
        return await self.store.invoices.still_in(ids, S.QUEUED)

    async def _free_queued(self, now: dt.datetime) -> list[int]:
        return [i for i in await self.store.invoices.due_ids(self.company.name, S.QUEUED, now)
                if i not in self._reserved]

    def _batches_running(self) -> int:
        return sum(1 for t in self._tasks if t.get_name() == "batch")

    async def _send_offline(self) -> bool:
        """OFFLINE invoices, oldest deadline first, with offlineMode (PROTOCOL.md §8.2): technical corrections
        online only (§8.4), a backlog in offline batch sessions, the rest online. Nothing during a total
        failure (no obligation to send; they wait). True while some are still waiting for their turn."""
        if self.offline.verdict().state == "total-failure":
            return False
        now = self.clock.now()
        rows = [r for r in await self.store.invoices.due(self.company.name, [S.OFFLINE], now, limit=100_000)
                if r.id not in self._reserved]
        if not rows:
            return False
        rows.sort(key=lambda r: (r.offline_deadline is None, r.offline_deadline or now, r.id))
        records = {o.invoice_id: o for o in await self.store.offline.of_company(self.company.name,
                                                                                 [r.id for r in rows])}
        corrections = [r for r in rows if r.id in records and records[r.id].corrects_hash]
        plain = [r for r in rows if not (r.id in records and records[r.id].corrects_hash)]
        attachments = [r for r in plain if r.has_attachment]
        rest = [r for r in plain if not r.has_attachment]
        by_batch = attachments + (rest if len(rest) >= self.company.sending.batch_threshold else [])
        cap = self._batch_cap()
        for start in range(0, len(by_batch), cap):
            if self._batches_running() >= BATCHES_AT_ONCE:
                break
            group = by_batch[start:start + cap]
            self._start(self._batch(group, offline_mode=True), "batch", group)
        online = corrections + ([] if len(rest) >= self.company.sending.batch_threshold else rest)
        online.sort(key=lambda r: (r.offline_deadline is None, r.offline_deadline or now, r.id))
        key = self.connection.context.context.key
        for row in online:
            if self.limiter.delay(key, "invoiceSend") > SEND_WAIT_AT_MOST:
                break
            corrected = records[row.id].corrects_hash if row.id in records else None
            await self._online.acquire()
            self._start(self._online_one(row, corrected), "online", [row])
        return any(r.id not in self._reserved for r in rows)

    async def _send_online(self, rows: list[InvoiceRow]) -> None:
        """`rows` come reserved (dispatch_once); those not started here are given back."""
        key = self.connection.context.context.key
        started: set[int] = set()
        try:
            for row in rows:
                if self.limiter.delay(key, "invoiceSend") > SEND_WAIT_AT_MOST:
                    return
                await self._online.acquire()
                self._start(self._online_one(row), "online", [row])
                started.add(row.id)
        finally:
            self._reserved -= {r.id for r in rows if r.id not in started}

    async def _online_one(self, row: InvoiceRow, corrected_hash: str | None = None) -> None:
        try:
            failure = await self.channel.send(row, corrected_hash=corrected_hash)
            if failure is not None:
                await self.connection.hold(failure)
        finally:
            self._online.release()

    async def _batch(self, rows: list[InvoiceRow], *, offline_mode: bool = False) -> None:
        task = asyncio.current_task()

        def closed() -> None:
            # The session is closed: KSeF processes it on its own, and the task only waits for and stores its
            # results (batch.RESULTS_AT_ONCE at a time). Its slot goes to the backlog's next piece now, so KSeF
            # gets that piece while this one's results are read (with the results inside the slot, KSeF sat
            # idle ~10 s of a 10 000 backlog). The task's invoices stay reserved until it ends.
            if task is not None:
                task.set_name("batch-results")
            self.ledger.dispatch_due.set()

        failure = await self.batches.send(rows, offline_mode=offline_mode, closed=closed)
        if failure is not None:
            await self.connection.hold(failure)

    def _start(self, coro: Any, kind: str, rows: list[InvoiceRow], *, wake: bool = True) -> None:
        """Run a send task; when it ends the loops look again (`wake=False`: the task wakes them itself
        when it did something, so a task that found nothing to do does not set off another round)."""
        assert self._group is not None
        ids = {r.id for r in rows}
        self._reserved |= ids

        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:   # one invoice's trouble must not stop the company (logged, retried)
                self.log.error("outbox.task_failed", kind=kind, invoices=len(ids), error=repr(exc),
                               where=traceback.format_exc(limit=-3))
            finally:
                self._reserved -= ids
                if wake:
                    self.ledger.dispatch_due.set()
                    self.ledger.track_due.set()

        task = self._group.create_task(guarded(), name=kind)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _batch_cap(self) -> int:
        cap = self.company.sending.batch_max_invoices
        limits = self.connection.limits
        if limits is not None:
            cap = min(cap, limits.batch_session.max_invoices)
        return max(1, cap)

    async def _promote_deferred(self) -> None:
        due = await self.store.invoices.due(self.company.name, [S.DEFERRED], self.clock.now())
        ids = [r.id for r in due if r.next_attempt_at is not None and r.id not in self._reserved]
        await self.ledger.move_many(ids, S.DEFERRED, S.QUEUED, detail={"retry": True})

    def _resume_batches_soon(self) -> None:
        """Closed batch sessions whose results are not all in (after a restart, or a failed poll)."""
        if any(t.get_name() == "batch-resume" for t in self._tasks):
            return

        async def resume() -> None:
            # Started at every dispatch round: waking the loops when it had nothing to do (e.g. while the
            # only unfinished session is one a batch task is following) would spin them without pause.
            for session in await self.store.sessions.unfinished(self.company.name, "batch"):
                if session.id in self.batches.active or session.state == T.OPEN:
                    continue
                try:
                    failure = await self.batches.close_and_track(session)
                    if failure is not None:
                        await self.connection.hold(failure)
                finally:
                    self.ledger.dispatch_due.set()
                    self.ledger.track_due.set()

        self._start(resume(), "batch-resume", [], wake=False)

    async def _idle(self, queued: list[tuple[int, bool]], draining: asyncio.Event) -> float | None:
        """When to look again (with nothing to do: when the ledger wakes the dispatcher, or after IDLE_LOOK_SECONDS);
        closes the online session when it has been idle long enough."""
        waits: list[float] = []
        if self.channel.current is not None and not self.channel.busy:
            nothing_left = not queued and not await self._online_in_flight()
            idle = self.channel.idle_for()
            if (self.once and nothing_left) or idle >= self.company.sending.online_idle_close_seconds:
                await self.channel.close_current("idle")
            else:
                waits.append(self.company.sending.online_idle_close_seconds - idle)
        upcoming = await self.store.invoices.next_attempt_at(self.company.name)
        if upcoming is not None:
            waits.append(max(0.0, (upcoming - self.clock.now()).total_seconds()))
        if queued and any(not attached for _, attached in queued):      # (id, has_attachment)
            waits.append(max(0.05, self.limiter.delay(self.connection.context.context.key, "invoiceSend")))
        return max(0.0, min(waits)) if waits else IDLE_LOOK_SECONDS

    async def _online_in_flight(self) -> bool:
        counts = await self.store.invoices.counts(self.company.name)
        return any(counts.get(s, 0) for s in (S.SUBMITTING, S.IN_DOUBT))

    # --- drain mode -------------------------------------------------------------------------------------

    async def settled(self) -> bool:
        """Nothing left to do without a person: no file waiting, nothing in flight, sessions finished."""
        if self._tasks or self.intake.busy or self.intake.pending:
            return False
        if await self.store.holds.get(self.company.name) is None:   # on hold: waits for a person
            counts = await self.store.invoices.counts(self.company.name)
            if any(counts.get(s, 0) for s in (*ACTIVE, S.HELD)):
                return False
            if await self.store.sessions.unfinished(self.company.name):
                return False
        try:
            return not await asyncio.to_thread(spool.scan, self.company.folders.outbox)
        except FileNotFoundError:
            return True

    async def wait_idle(self) -> None:
        """Drain mode (`--once`): return once the worker has reported that nothing is left, and it stays so
        for a few looks in a row (a file may be landing between two looks)."""
        calm = 0
        while calm < SETTLED_ROUNDS:
            await asyncio.sleep(SETTLED_CHECK_SECONDS)      # real time: a check, not a business timer
            calm = calm + 1 if self.idle.is_set() and await self.settled() else 0
            if calm == 0:
                self.idle.clear()
                self.ledger.dispatch_due.set()              # look again; the loop reports when it is idle

