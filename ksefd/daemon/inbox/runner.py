"""One company's receiving inside `serve` (service.py): wait until the company's shared connection is logged
in, then run the InboxWorker until `stop`.

The worker is built on the connection's current login. When the login itself fails during a cycle (the token
revoked, the certificate expired), the connection puts the company on hold (one hold for both halves) and the
worker stops; when a new login succeeds (after the hold's retry, with the credential files read again, or by
the outbox half), a worker is built on it. In drain mode (`ksefd run --once`) one cycle runs at once,
whatever the cadence (a person asked for it), and the task ends. One company's receiving never stops others.
"""

from __future__ import annotations

import asyncio
import traceback

import structlog

from ksefd.config import Company
from ksefd.i18n import _

from ..connection import CompanyConnection
from ..failures import Failure
from ..runtime import Runtime, sleep_unless_stopped
from .worker import InboxWorker

log = structlog.get_logger("ksefd.daemon.inbox")


async def run_inbox(runtime: Runtime, company: Company, connection: CompanyConnection, stop: asyncio.Event) -> None:
    relogin = asyncio.Event()
    connection.on_login(relogin.set)
    logged = False
    while not stop.is_set():
        wait = await connection.ready()
        if wait is not None:
            if not logged:     # the connection answers every few seconds while on hold: log the wait once
                log.info("inbox.waiting_for_connection", company=company.name, retry_in=round(wait, 1))
                logged = True
            if runtime.once:
                runtime.note_problem(company.name, _("receiving did not run: the company is not logged in to "
                                                      "KSeF"))
                return
            await sleep_unless_stopped(runtime.clock, stop, wait)
            continue
        logged = False
        relogin.clear()
        ended = asyncio.Event()          # this login's worker stops: the daemon stops, or the login changed

        async def login_failed(failure: Failure, ended: asyncio.Event = ended) -> None:
            await connection.hold(failure)
            ended.set()

        worker = InboxWorker(company, connection.context, runtime.store, runtime.clock,
                             workdir=runtime.config.data_dir / ".ksefd-inbox" / company.name,
                             on_login_failure=login_failed)
        if runtime.once:
            try:
                report = await worker.run_cycle(force=True, numbers=False)
            except Exception as error:        # one company's receiving never takes the daemon down
                log.error("inbox.cycle_crashed", company=company.name, error=repr(error),
                          where=traceback.format_exc(limit=-3))
                runtime.note_problem(company.name, _("the receiving cycle failed: {error}", error=repr(error)))
            else:             # `ksefd run --once` exits 3 on any of these (issue #10 point 6)
                for subject, error_text in report.failures.items():
                    runtime.note_problem(company.name, _("receiving {subject} failed: {error}", subject=subject,
                                                          error=error_text))
            return
        await _run_until(worker, stop, relogin, ended)


async def _run_until(worker: InboxWorker, stop: asyncio.Event, relogin: asyncio.Event, ended: asyncio.Event) -> None:
    async def watch() -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(relogin.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        ended.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await worker.run_forever(ended)
    finally:
        watcher.cancel()
