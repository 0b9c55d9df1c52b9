"""One company's receiving inside `serve` (service.py): wait until the company's shared connection is logged
in, then run the InboxWorker until `stop`.

In drain mode (`ksefd run --once`) one cycle runs at once, whatever the cadence (a person asked for it),
and the task ends. A company whose credentials or permissions fail is retried by its connection with
capped backoff (or held until a person acts) and never stops the others.
"""

from __future__ import annotations

import asyncio
import traceback

import structlog

from ksefd.config import Company

from ..connection import CompanyConnection
from ..runtime import Runtime, sleep_unless_stopped
from .worker import InboxWorker

log = structlog.get_logger("ksefd.daemon.inbox")


async def run_inbox(runtime: Runtime, company: Company, connection: CompanyConnection, stop: asyncio.Event) -> None:
    logged = False
    while not stop.is_set():
        wait = await connection.ready()
        if wait is None:
            break
        if not logged:     # the connection answers every few seconds while on hold: log the wait once
            log.info("inbox.waiting_for_connection", company=company.name, retry_in=round(wait, 1))
            logged = True
        if runtime.once:
            runtime.note_problem(company.name, "receiving did not run: the company is not logged in to KSeF")
            return
        await sleep_unless_stopped(runtime.clock, stop, wait)
    if stop.is_set():
        return
    worker = InboxWorker(company, connection.context, runtime.store, runtime.clock,
                         workdir=runtime.config.data_dir / ".ksefd-inbox" / company.name)
    if runtime.once:
        try:
            report = await worker.run_cycle(force=True)
        except Exception as error:        # one company's receiving never takes the daemon down
            log.error("inbox.cycle_crashed", company=company.name, error=repr(error),
                      where=traceback.format_exc(limit=-3))
            runtime.note_problem(company.name, f"the receiving cycle failed: {error!r}")
        else:
            for subject, error_text in report.failures.items():
                runtime.note_problem(company.name, f"receiving {subject} failed: {error_text}")
    else:
        await worker.run_forever(stop)
