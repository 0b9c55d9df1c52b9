"""One company's receiving inside `serve` (service.py): log in, then run the InboxWorker until `stop`.

In drain mode (`ksefd run --once`) one cycle runs at once, whatever the cadence (a person asked for it),
and the task ends. A company whose credentials or permissions fail is retried with capped backoff and
never stops the others.
"""

from __future__ import annotations

import asyncio

import structlog

from ksefd.config import Company
from ksefd.ksef.errors import KsefError

from .credentials import connect
from .inbox import InboxWorker
from .runtime import Runtime, sleep_unless_stopped

log = structlog.get_logger("ksefd.daemon.inbox")


async def run_inbox(runtime: Runtime, company: Company, stop: asyncio.Event) -> None:
    delay = company.sending.retry_min_seconds
    while not stop.is_set():
        try:
            connection = await connect(runtime, company)
        except KsefError as error:
            log.warning("inbox.connect_failed", company=company.name, error=str(error), retry_in=delay)
            if runtime.once:
                return
            await sleep_unless_stopped(runtime.clock, stop, delay)
            delay = min(delay * 2, max(company.sending.retry_max_seconds, company.sending.hold_retry_seconds))
            continue
        worker = InboxWorker(company, connection.context, runtime.store, runtime.clock,
                             workdir=runtime.config.data_dir / ".ksefd-inbox" / company.name)
        if runtime.once:
            try:
                await worker.run_cycle(force=True)
            except Exception as error:        # one company's receiving never takes the daemon down
                log.exception("inbox.cycle_crashed", company=company.name, error=str(error))
        else:
            await worker.run_forever(stop)
        return

