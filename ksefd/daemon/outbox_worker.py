"""One company's outbox: intake, the sending policy, tracking, holds and recovery after a restart
(issue #5 items 2-6). Companies run side by side (service.py), each in its own tasks, with its own KSeF
context and rate-limit windows, so one company's backlog never starves another's trickle.

Sending policy: with `batch_threshold` or more invoices waiting, batch sessions of at most
`batch_max_invoices` (and the context's cap); below it, the online session. An invoice with an
attachment always goes by batch (online sessions refuse attachments, PROTOCOL.md §4.2). Online sends are
started only while the client's rate limiter would let them through at once, so invoices do not sit in
SUBMITTING for an hour behind `invoiceSend` (180/h); the backlog then grows into a batch instead.

Holds: credentials that cannot be read or are refused, or a missing permission, put the company on hold
(store `company_holds`, shown by `ksefd status`): its waiting invoices become HELD, nothing is sent, and
every `hold_retry_seconds` it logs in again with freshly read credential files and tries once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import traceback
from typing import Any

from ksefd import spool
from ksefd.config import Company
from ksefd.ksef.errors import KsefError
from ksefd.store import InvoiceRow, InvoiceState, SessionState

from . import outbox_queries as queries
from .credentials import connect
from .outbox_batch import BatchRunner
from .outbox_context import CompanyCtx
from .outbox_files import OutboxFiles
from .outbox_intake import Intake
from .outbox_online import OnlineChannel
from .outbox_outcomes import Outcomes
from .outbox_tracker import Tracker
from .retry import Failure, classify
from .runtime import Runtime, wait_for

S = InvoiceState
T = SessionState
ONLINE_CONCURRENCY = 4
BATCHES_AT_ONCE = 2
LOOP_RETRY_SECONDS = 5.0
SEND_WAIT_AT_MOST = 2.0        # seconds the limiter may make an online send wait before we prefer to wait here
ACTIVE = (S.CLAIMED, S.CHECKED, S.QUEUED, S.SUBMITTING, S.IN_DOUBT, S.PROCESSING, S.ACCEPTED, S.UPO_SAVED,
          S.DEFERRED)


class OutboxWorker:
    def __init__(self, runtime: Runtime, company: Company) -> None:
        self.runtime = runtime
        self.company = company
        self.ctx = CompanyCtx(runtime, company, OutboxFiles(company, runtime.work_dir(company)))
        self.outcomes = Outcomes(self.ctx)
        self.intake = Intake(self.ctx, self.outcomes)
        self.channel = OnlineChannel(self.ctx, self.outcomes)
        self.tracker = Tracker(self.ctx, self.outcomes, self.channel)
        self.batches = BatchRunner(self.ctx, self.outcomes)
        self._online = asyncio.Semaphore(ONLINE_CONCURRENCY)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._retry_connect_at: dt.datetime | None = None
        self._connect_failures = 0
        self._recovered = False

    @property
    def log(self) -> Any:
        return self.ctx.log

    # --- the loops ----------------------------------------------------------------------------------

    async def run(self, draining: asyncio.Event) -> None:
        self.ctx.files.prepare()
        # Archives of batches a previous run was building: never closed, so never needed (outbox_batch.py).
        await asyncio.to_thread(shutil.rmtree, self.runtime.batch_dir(self.company), True)
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self.intake.run(draining))
            group.create_task(self._dispatch_loop(draining))
            group.create_task(self._track_loop(draining))
        self._group = None

    async def close_online(self) -> None:
        """Graceful shutdown: close the online session (its UPO is fetched after the next start)."""
        if self.ctx.connection is not None:
            with contextlib.suppress(KsefError):
                await self.channel.close_current("shutdown")

    async def _dispatch_loop(self, draining: asyncio.Event) -> None:
        while not draining.is_set():
            try:
                wait = await self.dispatch_once(draining)
            except Exception as exc:   # a bug or a full disk must not stop the other companies; logged, retried
                self.log.error("outbox.dispatch_failed", error=repr(exc), where=traceback.format_exc(limit=-3))
                wait = LOOP_RETRY_SECONDS
            await wait_for(self.ctx.kick, self.runtime.clock, wait)

    async def _track_loop(self, draining: asyncio.Event) -> None:
        while not draining.is_set():
            wait: float | None = LOOP_RETRY_SECONDS
            if self.ctx.connection is not None and self._recovered:
                try:
                    failure = await self.tracker.step()
                    if failure is not None:
                        await self.hold(failure)
                    wait = self.tracker.next_wake()
                    wait = LOOP_RETRY_SECONDS if wait is None else min(wait, LOOP_RETRY_SECONDS)
                except Exception as exc:
                    self.log.error("outbox.track_failed", error=repr(exc), where=traceback.format_exc(limit=-3))
            await wait_for(self.ctx.track, self.runtime.clock, wait)

    # --- connecting and holds ---------------------------------------------------------------------------

    async def ready(self) -> float | None:
        """Connected and not on hold: None. Otherwise the seconds to wait before looking again."""
        hold = await self.runtime.store.holds.get(self.company.name)
        now = self.ctx.now()
        if hold is not None and hold.next_retry_at is not None and now < hold.next_retry_at:
            return (hold.next_retry_at - now).total_seconds()
        if self.ctx.connection is None or hold is not None:
            if self._retry_connect_at is not None and now < self._retry_connect_at:
                return (self._retry_connect_at - now).total_seconds()
            try:
                self.ctx.connection = await connect(self.runtime, self.company)
            except KsefError as exc:
                failure = classify(exc)
                if failure.verdict == "hold":
                    await self.hold(failure)
                    return self.company.sending.hold_retry_seconds
                self._connect_failures += 1
                delay = min(self.company.sending.retry_max_seconds,
                            self.company.sending.retry_min_seconds * 2.0 ** min(self._connect_failures - 1, 20))
                self._retry_connect_at = now + dt.timedelta(seconds=delay)
                self.log.warning("outbox.connect_failed", error=failure.message, retry_in=delay)
                return delay
            self._connect_failures, self._retry_connect_at = 0, None
            self.channel.forget()
            if hold is not None:
                await self.release()
        if not self._recovered:
            await self.recover()
        return None

    async def hold(self, failure: Failure) -> None:
        until = self.ctx.now() + dt.timedelta(seconds=self.company.sending.hold_retry_seconds)
        first = await self.runtime.store.holds.get(self.company.name) is None
        await self.runtime.store.holds.hold(self.company.name, failure.code, failure.message, until)
        for state in (S.QUEUED, S.DEFERRED):
            rows = await self.runtime.store.invoices.in_state(self.company.name, state)
            free = [r.id for r in rows if r.id not in self.ctx.reserved]
            if free:
                for row in await self.runtime.store.invoices.transition_many(free, state, S.HELD, detail={
                        "hold": failure.code}):
                    self.ctx.show(row, {"hold": failure.message})
        self.ctx.connection = None
        log = self.log.error if first else self.log.info
        log("outbox.company_on_hold", code=failure.code, reason=failure.message, retry_at=until.isoformat())

    async def release(self) -> None:
        await self.runtime.store.holds.release(self.company.name)
        held = [r.id for r in await self.runtime.store.invoices.in_state(self.company.name, S.HELD)]
        if held:
            for row in await self.runtime.store.invoices.transition_many(held, S.HELD, S.QUEUED,
                                                                         detail={"hold": "released"}):
                self.ctx.show(row)
        self.log.info("outbox.company_resumed", invoices=len(held))

    # --- recovery after a restart ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Pick up what a previous run (maybe killed) left, before sending anything new."""
        store, name = self.runtime.store, self.company.name
        for session in await store.sessions.unfinished(name, "batch"):
            if session.state == T.OPEN:
                await self.batches.abandon(session)
        for row in await store.invoices.in_state(name, S.SUBMITTING):
            used = await store.sessions.get(row.session_id) if row.mode == "batch" and row.session_id else None
            if used is not None and used.state in (T.ABANDONED, T.FAILED):   # safety net
                await self.batches.requeue(used, {"reason": f"batch session {used.state}"})
        for row in await store.invoices.in_state(name, S.SUBMITTING):
            if row.mode != "batch":
                doubt = await store.invoices.transition(row.id, S.SUBMITTING, S.IN_DOUBT,
                                                        detail={"reason": "found SUBMITTING after a restart"})
                self.ctx.show(doubt)
        self._recovered = True
        self.ctx.wake()

    # --- dispatching ----------------------------------------------------------------------------------

    async def dispatch_once(self, draining: asyncio.Event) -> float | None:
        wait = await self.ready()
        if wait is not None:
            return wait
        await self._promote_deferred()
        self._resume_batches_soon()
        cap = self._batch_cap()
        waiting = await queries.due_count(self.runtime.store, self.company.name, S.QUEUED, self.ctx.now())
        if self.ctx.intake_busy and waiting - len(self.ctx.reserved) < cap:
            return 0.2               # a drop is still being claimed: see the whole backlog before choosing
        queued = []
        if waiting > len(self.ctx.reserved):
            queued = [r for r in await self.runtime.store.invoices.due(self.company.name, [S.QUEUED], self.ctx.now(),
                                                                       limit=100_000)
                      if r.id not in self.ctx.reserved]
        attachments = [r for r in queued if r.has_attachment]
        plain = [r for r in queued if not r.has_attachment]
        by_batch = attachments + (plain if len(plain) >= self.company.sending.batch_threshold else [])
        for start in range(0, len(by_batch), cap):
            if sum(1 for t in self._tasks if t.get_name() == "batch") >= BATCHES_AT_ONCE:
                break
            self._start(self._batch(by_batch[start:start + cap]), "batch", by_batch[start:start + cap])
        if not (len(plain) >= self.company.sending.batch_threshold):
            await self._send_online(plain)
        return await self._idle(queued, draining)

    async def _send_online(self, rows: list[InvoiceRow]) -> None:
        key = self.ctx.context.context.key
        for row in rows:
            if self.runtime.limiter.delay(key, "invoiceSend") > SEND_WAIT_AT_MOST:
                return
            await self._online.acquire()
            self._start(self._online_one(row), "online", [row])

    async def _online_one(self, row: InvoiceRow) -> None:
        try:
            failure = await self.channel.send(row)
            if failure is not None:
                await self.hold(failure)
        finally:
            self._online.release()

    async def _batch(self, rows: list[InvoiceRow]) -> None:
        failure = await self.batches.send(rows)
        if failure is not None:
            await self.hold(failure)

    def _start(self, coro: Any, kind: str, rows: list[InvoiceRow], *, wake: bool = True) -> None:
        """Run a send task; when it ends the loops look again (`wake=False`: the task wakes them itself
        when it did something, so a task that found nothing to do does not set off another round)."""
        assert self._group is not None
        ids = {r.id for r in rows}
        self.ctx.reserved |= ids

        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:   # one invoice's trouble must not stop the company (logged, retried)
                self.log.error("outbox.task_failed", kind=kind, invoices=len(ids), error=repr(exc),
                               where=traceback.format_exc(limit=-3))
            finally:
                self.ctx.reserved -= ids
                if wake:
                    self.ctx.wake()

        task = self._group.create_task(guarded(), name=kind)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _batch_cap(self) -> int:
        cap = self.company.sending.batch_max_invoices
        if self.ctx.connection is not None:
            cap = min(cap, self.ctx.connection.limits.batch_session.max_invoices)
        return max(1, cap)

    async def _promote_deferred(self) -> None:
        due = await self.runtime.store.invoices.due(self.company.name, [S.DEFERRED], self.ctx.now())
        ids = [r.id for r in due if r.next_attempt_at is not None and r.id not in self.ctx.reserved]
        if ids:
            for row in await self.runtime.store.invoices.transition_many(ids, S.DEFERRED, S.QUEUED,
                                                                         detail={"retry": True}):
                self.ctx.show(row)

    def _resume_batches_soon(self) -> None:
        """Closed batch sessions whose results are not all in (after a restart, or a failed poll)."""
        if any(t.get_name() == "batch-resume" for t in self._tasks):
            return

        async def resume() -> None:
            # Started at every dispatch round: waking the loops when it had nothing to do (e.g. while the
            # only unfinished session is one a batch task is following) would spin them without pause.
            for session in await self.runtime.store.sessions.unfinished(self.company.name, "batch"):
                if session.id in self.batches.active or session.state == T.OPEN:
                    continue
                try:
                    failure = await self.batches.close_and_track(session)
                    if failure is not None:
                        await self.hold(failure)
                finally:
                    self.ctx.wake()

        self._start(resume(), "batch-resume", [], wake=False)

    async def _idle(self, queued: list[InvoiceRow], draining: asyncio.Event) -> float | None:
        """When to look again; closes the online session when it has been idle long enough."""
        waits: list[float] = [self.company.sending.online_idle_close_seconds]
        if self.channel.current is not None and not self.channel.busy:
            nothing_left = not queued and not await self._online_in_flight()
            idle = self.channel.idle_for()
            if (self.runtime.once and nothing_left) or idle >= self.company.sending.online_idle_close_seconds:
                await self.channel.close_current("idle")
            else:
                waits.append(self.company.sending.online_idle_close_seconds - idle)
        upcoming = await queries.next_attempt(self.runtime.store, self.company.name)
        if upcoming is not None:
            waits.append(max(0.0, (upcoming - self.ctx.now()).total_seconds()))
        if queued and any(not r.has_attachment for r in queued):
            waits.append(max(0.05, self.runtime.limiter.delay(self.ctx.context.context.key, "invoiceSend")))
        return max(0.0, min(waits))

    async def _online_in_flight(self) -> bool:
        counts = await self.runtime.store.invoices.counts(self.company.name)
        return any(counts.get(s, 0) for s in (S.SUBMITTING, S.IN_DOUBT))

    # --- drain mode -------------------------------------------------------------------------------------

    async def settled(self) -> bool:
        """Nothing left to do without a person: no file waiting, nothing in flight, sessions finished."""
        if self._tasks or self.ctx.intake_busy or self.intake.pending:
            return False
        if await self.runtime.store.holds.get(self.company.name) is None:   # on hold: waits for a person
            counts = await self.runtime.store.invoices.counts(self.company.name)
            if any(counts.get(s, 0) for s in (*ACTIVE, S.HELD)):
                return False
            if await self.runtime.store.sessions.unfinished(self.company.name):
                return False
        try:
            return not await asyncio.to_thread(spool.scan, self.company.folders.outbox)
        except FileNotFoundError:
            return True
