"""`serve(config, stop)`: the one core of the daemon (DESIGN.md conventions 1-5). `ksefd run`, `ksefd demo`,
systemd and a Windows service are thin shells that differ only in how they set `stop` (and `force`).

Phases, each logged (the shape of uvicorn's server: startup -> main loop -> shutdown):

* startup: open the state database (migrations), restore the rate limiter's windows, create one
  connection per company (shared by its outbox and inbox halves) and each sending company's outbox worker;
* main loop: every company's halves and the heartbeat, all owned by one TaskGroup
  and each guarded (a failure is logged and retried, never the end of the other companies), until `stop`
  is set, or, with `once=True` (drain mode), until every worker reports that nothing is left to do;
* drain: workers stop taking new work; what is in flight gets `shutdown_grace_seconds` to finish (cut short
  by `force`, a second signal), then it is cancelled, which is safe: every step is persisted before its
  KSeF call;
* shutdown (always, also after an error in the TaskGroup): online sessions are closed, the limiter's run
  marked as ended cleanly, the clients and the database closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from ksefd import __version__, i18n
from ksefd.clock import Clock, SystemClock
from ksefd.config import Company, Config
from ksefd.i18n import _
from ksefd.invoice import load_schema
from ksefd.ksef import RateLimiter
from ksefd.store import Store

from . import notify
from .availability import AvailabilityBoard, KsefAvailability
from .certificate_renewal import renew_due_certificates
from .connection import CompanyConnection
from .credential_expiry import warn_daily
from .inbox.runner import run_inbox
from .instance import InstanceLock, StartupProblem, check_writable
from .lifecycle import every, guarded
from .limit_waits import held_by_company
from .notify_status import summary
from .outbox.sending_off import return_unsent
from .outbox.watch import OutboxWatcher
from .outbox.worker import OutboxWorker
from .reload import watch_reloads
from .runtime import Runtime
from .status import HEARTBEAT_STALE
from .words import shown

log = structlog.get_logger("ksefd.daemon")

if TYPE_CHECKING:
    from .http_server import HttpEndpoint  # imported only when [daemon] http is set: prometheus costs ~10 MB


def _prepare(worker: OutboxWorker) -> None:
    try:
        worker.files.prepare()
        worker.folders_prepared = True      # its first run need not do it again
    except OSError as exc:      # the worker's own start tries again (and says so); the others go on
        log.error("outbox.folders_unusable", company=worker.company.name, error=str(exc))

# Its readers (`ksefd status`, `ksefd reload`, /healthz, the metrics) call it stale after HEARTBEAT_STALE (30 s):
# a beat every 10 s leaves room for two missed ones, and wakes an idle daemon half as often as every 5 s.
HEARTBEAT_SECONDS = HEARTBEAT_STALE.total_seconds() / 3
RENEWAL_CHECK_SECONDS = 86_400.0   # KSeF certificates due for renewal: looked at start-up, then daily (issue #13)
EXPIRY_WARNING_SECONDS = 86_400.0  # credential end warnings: at start-up, then daily (issue #12 point 7)
PROGRESS_SECONDS = 0.2
FORCED_CLOSE_SECONDS = 1.0      # after a forced stop, closing the online sessions gets this long at most

Progress = Callable[[Runtime], Awaitable[None]]


async def serve(config: Config, stop: asyncio.Event, *, clock: Clock | None = None, once: bool = False,
                on_progress: Progress | None = None, force: asyncio.Event | None = None,
                reload: asyncio.Event | None = None) -> list[str]:
    """Run the daemon until `stop` is set (or, with `once`, until nothing is left to do).

    `force`, when set, cuts the drain short (a second Ctrl+C or SIGTERM). `reload`, when set (SIGHUP,
    reload.py), re-reads the config file and applies it per company; `ksefd reload` asks the same through
    the state database. `on_progress(runtime)`, if given,
    is awaited about every 0.2 s while running (e.g. `ksefd demo` reads `runtime.store` there to print a
    live summary; `status.gather` does the reading).

    Returns what the configured companies failed to do (empty when each did what its config asks; `ksefd
    run --once` exits non-zero otherwise, issue #10 point 6). Before anything starts: StartupProblem for a
    path it cannot write, AlreadyRunning when another daemon holds the state database (instance.py)."""
    check_writable(config)
    lock = InstanceLock(config.state_db)
    lock.acquire()
    try:
        daemon = Daemon(await _startup(config, clock or SystemClock(), once), force or asyncio.Event())
        daemon.reload_requested = reload or asyncio.Event()
        notify.ready()                      # systemd Type=notify (systemd/ksefd.service): start-up done
        try:
            async with asyncio.TaskGroup() as group:
                daemon.start(group)
                try:
                    await daemon.main_loop(stop, on_progress)
                finally:
                    await daemon.drain()
        finally:
            await daemon.shutdown()
        return daemon.problems
    finally:
        lock.release()


async def _startup(config: Config, clock: Clock, once: bool) -> Runtime:
    # Compiled once, before any check thread runs (issue #15 point 6): a broken installation stops the start
    # here with SchemaUnavailable, not at the first invoice.
    await asyncio.to_thread(load_schema)
    try:
        store = await Store.open(config.state_db, clock, private_folder=config.state_db.parent != config.data_dir)
    except sqlite3.DatabaseError as error:     # not SQLite, damaged, or a disk error under it
        raise StartupProblem("[daemon] state_db", config.state_db,
                             _("cannot be used as the state database ({reason})", reason=str(error)),
                             _("If the disk is full, free space; if the file is not ksefd's state database, point "
                               "state_db elsewhere.")) from None
    limiter = RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep,
                          journal=store.rate_limits)    # every grant committed before its request (issue #10)
    await limiter.load()
    runtime = Runtime(config, store, clock, limiter, once=once)
    i18n.use(config.language)      # error.json hints and other texts for people ([daemon] language, issue #14)
    for company in config.companies:
        if not company.send:       # switched off: give back what was claimed but never sent (sending_off.py)
            await return_unsent(runtime, company)
        if not (company.send or company.receive) and await store.holds.release(company.name):
            log.info("outbox.company_resumed", company=company.name, why="neither sends nor receives now")
    senders = [c.name for c in config.companies if c.send]
    log.info("daemon.started", version=__version__, state_db=str(config.state_db), companies=len(config.companies),
             sending=senders, once=once)
    return runtime


class Daemon:
    """The running daemon: its companies' connections and workers, and the tasks that run them."""

    def __init__(self, runtime: Runtime, force: asyncio.Event) -> None:
        self.runtime = runtime
        self.force = force
        self.draining = asyncio.Event()
        companies = [c for c in runtime.config.companies if c.send or c.receive]   # enabled ones only (config)
        self.connections = {c.name: CompanyConnection(runtime, c) for c in companies}
        # /healthz, /readyz, /metrics and the status page when [daemon] http is set (issue #12 point 5); built
        # here so that its request metrics watch the KSeF clients before the first call.
        self.http: HttpEndpoint | None = None
        if runtime.config.http is not None:
            from .http_server import HttpEndpoint
            self.http = HttpEndpoint(runtime, self.connections)
        self.watcher = OutboxWatcher()         # one for every outbox (issue #16 point 4)
        # Issue #11: one KSeF availability monitor (Latarnia + what the daemon sees) per KSeF target.
        self.availability = AvailabilityBoard(runtime.config, runtime.store, runtime.clock)
        self.workers = [OutboxWorker.for_runtime(runtime, c, self.connections[c.name], self.watcher,
                                                 self.availability.for_company(c)) for c in companies if c.send]
        self.receivers: list[asyncio.Task[None]] = []
        self.tasks: list[asyncio.Task[None]] = []
        # Per company: its own stop (set by the drain, or by a reload that removes or changes the company) and
        # its tasks, so that a reload stops and starts one company without touching the others (reload.py).
        self.company_stops: dict[str, asyncio.Event] = {c.name: asyncio.Event() for c in companies}
        self.company_tasks: dict[str, list[asyncio.Task[None]]] = {c.name: [] for c in companies}
        self.group: asyncio.TaskGroup | None = None
        self.watched_targets: set[str] = set()      # KSeF targets whose availability monitor runs
        self.reload_requested = asyncio.Event()
        self.watcher_stop = asyncio.Event()
        self.watcher_task: asyncio.Task[None] | None = None
        self.problems: list[str] = []           # filled at shutdown (what `--once` reports)

    def start(self, group: asyncio.TaskGroup) -> None:
        runtime, draining = self.runtime, self.draining
        self.group = group
        for worker in self.workers:     # the folders first, so that the watcher sees every outbox
            _prepare(worker)
        self.start_watcher()
        for worker in self.workers:
            self._start_outbox(worker)
        for company in runtime.config.companies:
            if company.receive:          # issue #6: KSeF -> inbox
                self._start_inbox(company)
        started = time.time()

        async def beat() -> None:
            await runtime.store.heartbeat.beat("daemon", {
                "version": __version__, "uptimeSeconds": round(time.time() - started),
                "heldByLimits": held_by_company(runtime.limiter, runtime.config.companies)})

        self.tasks.append(group.create_task(every(HEARTBEAT_SECONDS, beat, draining, "heartbeat"), name="heartbeat"))
        for worker in self.workers:     # issue #11: Latarnia polls, shared by the companies of each KSeF target
            self._watch_availability(worker.company)

        async def renew() -> None:
            await renew_due_certificates(runtime.config, runtime.store, runtime.clock, runtime.client_for)

        if not runtime.once:
            self.tasks.append(group.create_task(every(RENEWAL_CHECK_SECONDS, renew, draining, "certificate-renewal"),
                                                name="certificate-renewal"))
        if self.http is not None:
            self.tasks.append(group.create_task(guarded("http", functools.partial(self.http.run, draining), draining),
                                                name="http"))
        if not runtime.once:
            warn = functools.partial(warn_daily, runtime.config, runtime.clock)
            self.tasks.append(group.create_task(every(EXPIRY_WARNING_SECONDS, warn, draining, "credential-warnings"),
                                                name="credential-warnings"))
        # systemd: WATCHDOG=1 from the loop and STATUS= with a one-line summary (no-ops outside systemd).
        self.tasks.append(group.create_task(notify.keepalive(draining, self._summary), name="systemd-notify"))
        if not runtime.once:             # SIGHUP or `ksefd reload`: the config file again, per company
            self.tasks.append(group.create_task(guarded("reload", functools.partial(
                watch_reloads, self, self.reload_requested, draining), draining), name="reload"))
        self.tasks += self.receivers

    # --- per company (also what a reload uses, reload.py) ------------------------------------------------

    def start_watcher(self) -> None:
        """(Re)start the one watcher of every outbox: a reload that adds an outbox restarts it."""
        if self.group is None or not self.workers:
            return
        if self.watcher_task is not None:
            self.watcher_stop.set()
        self.watcher_stop = stop = asyncio.Event()
        if self.draining.is_set():
            stop.set()
        self.watcher_task = self.group.create_task(guarded("outbox-watcher", functools.partial(
            self.watcher.run, stop), stop), name="outbox-watcher")
        self.tasks.append(self.watcher_task)

    def _task(self, company: str, name: str, duty: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        assert self.group is not None
        stop = self.company_stops[company]
        task = self.group.create_task(guarded(name, duty, stop), name=name)
        self.company_tasks[company].append(task)
        self.tasks.append(task)
        return task

    def _watch_availability(self, company: Company) -> KsefAvailability:
        """The availability monitor of a sending company's KSeF target, polling from its first sending company
        on (at start or when a reload adds a company on a target no company used before)."""
        assert self.group is not None
        monitor = self.availability.ensure(company, self.runtime.config)
        if monitor.target not in self.watched_targets:
            self.watched_targets.add(monitor.target)
            self.tasks.append(self.group.create_task(guarded(
                f"latarnia:{monitor.target}", functools.partial(monitor.run, self.draining), self.draining),
                name=f"latarnia:{monitor.target}"))
        return monitor

    def _start_outbox(self, worker: OutboxWorker) -> None:
        name = worker.company.name
        self._task(name, f"outbox:{name}", functools.partial(worker.run, self.company_stops[name]))

    def _start_inbox(self, company: Company) -> None:
        duty = functools.partial(run_inbox, self.runtime, company, self.connections[company.name],
                                 self.company_stops[company.name])
        self.receivers.append(self._task(company.name, f"inbox:{company.name}", duty))

    def add_company(self, company: Company) -> None:
        """Start a company's halves (a reload added it, switched it on or changed it)."""
        self.company_stops[company.name] = stop = asyncio.Event()
        self.company_tasks[company.name] = []
        if self.draining.is_set():
            stop.set()
        connection = self.connections[company.name] = CompanyConnection(self.runtime, company)
        if company.send:
            monitor = self._watch_availability(company)
            worker = OutboxWorker.for_runtime(self.runtime, company, connection, self.watcher, monitor)
            self.workers.append(worker)
            _prepare(worker)
            self._start_outbox(worker)
        if company.receive:
            self._start_inbox(company)

    async def remove_company(self, name: str) -> None:
        """Stop one company's halves as the drain stops all: stop taking work, give what is in flight the grace
        period, cancel the rest, close its online session. The other companies are not touched."""
        stop = self.company_stops.pop(name, None)
        tasks = self.company_tasks.pop(name, [])
        workers = [w for w in self.workers if w.company.name == name]
        if stop is not None:
            stop.set()
        for worker in workers:
            worker.wake()
        pending = {t for t in tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.runtime.config.shutdown_grace_seconds)
        for task in pending:
            log.warning("daemon.drain_timeout", task=task.get_name(), forced=False)
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, self.runtime.config.shutdown_grace_seconds)):
                await asyncio.gather(*(w.close_online() for w in workers), return_exceptions=True)
        self.workers = [w for w in self.workers if w.company.name != name]
        self.receivers = [t for t in self.receivers if t not in tasks]
        self.tasks = [t for t in self.tasks if t not in tasks]
        self.connections.pop(name, None)

    async def _summary(self) -> str:
        return await summary(self.runtime.store, self.runtime.config, self.runtime.clock)

    async def main_loop(self, stop: asyncio.Event, on_progress: Progress | None) -> None:
        """Until `stop`; in drain mode also until every worker reports that it is idle and receiving is done."""
        finished = asyncio.ensure_future(self._drained()) if self.runtime.once else None
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                waiting = {stopping} | ({finished} if finished is not None else set())
                done, _ = await asyncio.wait(waiting, timeout=PROGRESS_SECONDS if on_progress else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if on_progress is not None:
                    await on_progress(self.runtime)
                if stopping in done:
                    return
                if finished is not None and finished in done:
                    log.info("daemon.drained")
                    return
        finally:
            for waiter in (finished, stopping):
                if waiter is not None and not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter

    async def _drained(self) -> None:
        await asyncio.gather(*(w.wait_idle() for w in self.workers), *self.receivers)

    async def drain(self) -> None:
        """Stop taking new work; give what is in flight the grace period (or less, if forced); cancel the rest."""
        grace = self.runtime.config.shutdown_grace_seconds
        log.info("daemon.draining", grace_seconds=grace)
        notify.stopping()
        self.draining.set()
        self.watcher_stop.set()
        for company_stop in self.company_stops.values():
            company_stop.set()
        for worker in self.workers:
            worker.wake()
        pending: set[asyncio.Future[Any]] = {t for t in self.tasks if not t.done()}
        forced: asyncio.Future[Any] = asyncio.ensure_future(self.force.wait())
        try:
            deadline = asyncio.get_running_loop().time() + grace
            while pending and not self.force.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                _, pending = await asyncio.wait(pending | {forced}, timeout=left,
                                                   return_when=asyncio.FIRST_COMPLETED)
                pending.discard(forced)
        finally:
            forced.cancel()
        for task in self.tasks:
            if not task.done():
                log.warning("daemon.drain_timeout", task=task.get_name(), forced=self.force.is_set())
                task.cancel()

    async def shutdown(self) -> None:
        """Always runs: close online sessions (bounded), mark the limiter's run clean, close clients and the DB."""
        limit = FORCED_CLOSE_SECONDS if self.force.is_set() else max(1.0, self.runtime.config.shutdown_grace_seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.gather(*(w.close_online() for w in self.workers), return_exceptions=True)
        runtime = self.runtime
        with contextlib.suppress(Exception):
            self.problems = await self._problems()
        with contextlib.suppress(Exception):
            await runtime.limiter.close()
        with contextlib.suppress(Exception):
            await runtime.store.heartbeat.beat("daemon", {"version": __version__, "stopped": True})
        await runtime.close_clients()
        await self.availability.close()
        await runtime.store.close()
        log.info("daemon.stopped", forced=self.force.is_set())

    async def _problems(self) -> list[str]:
        """Per company, what it failed to do: on hold, could not log in, or a receiving cycle failed."""
        found: list[str] = []
        for name, connection in self.connections.items():
            hold = await connection.hold_record()
            if hold is not None:
                found.append(_("{company}: on hold ({code}): {reason}", company=name, code=hold.code,
                               reason=shown(hold.reason)))
            elif connection.login_error is not None:
                found.append(_("{company}: could not log in to KSeF: {reason}", company=name,
                               reason=connection.login_error))
        for name, reasons in self.runtime.problems.items():
            found += [f"{name}: {reason}" for reason in reasons]
        return found
