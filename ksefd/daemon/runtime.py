"""What every part of the running daemon shares: the config, the state store, the clock, the KSeF clients
and the rate limiter whose windows survive restarts (issue #5 item 4).

One `KsefClient` per KSeF target (environment + base URL): companies on the same target share its HTTP
connections and public keys, each company gets its own `KsefContext` (connection.py). One `RateLimiter`
serves all of them: it counts per context, so one company's backlog never spends another's quota.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ksefd.clock import Clock
from ksefd.config import Company, Config
from ksefd.ksef import KsefClient, RateLimiter
from ksefd.store import Store

log = structlog.get_logger("ksefd.daemon")

# A company's loop with nothing to do (outbox dispatcher and tracker, offline desk) waits for the event that gives
# it work (the ledger's wake-ups, the outbox watcher, a login, an availability change) or a due time it computed;
# this is only the safety net for a missed wake-up. Every 300 s it cost an idle daemon a burst of ~30 SQLite round
# trips per company (0.6 s of CPU for 100 companies, 6 s for 1 000: 0.2 % of a core on average, issue #16
# point 4); once an hour it is a tenth of that, and nothing a person waits for depends on it.
IDLE_LOOK_SECONDS = 3600.0

@dataclass
class Runtime:
    config: Config
    store: Store
    clock: Clock
    limiter: RateLimiter
    once: bool = False
    clients: dict[tuple[str, str | None], KsefClient] = field(default_factory=dict)
    # Bounds CPU-heavy work shared by all companies (batch archives, local checks in threads).
    heavy: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    # Company -> what it failed to do in this run (a receiving cycle that failed, ...): `--once` reports it.
    problems: dict[str, list[str]] = field(default_factory=dict)

    def note_problem(self, company: str, what: str) -> None:
        self.problems.setdefault(company, []).append(what)

    def client_for(self, company: Company) -> KsefClient:
        key = (company.environment, company.base_url)
        client = self.clients.get(key)
        if client is None:
            client = KsefClient(company.environment, base_url=company.base_url, clock=self.clock,
                                gate=self.limiter, sleep=self.clock.sleep)
            self.clients[key] = client
        return client

    def work_dir(self, company: Company) -> Path:
        """Claimed files wait here: inside the outbox, so claiming is a rename on one file system; a
        dot-folder, so neither ksefd's scan nor an ERP listing `*.xml` sees it."""
        return company.folders.outbox / ".ksefd"

    def batch_dir(self, company: Company) -> Path:
        return self.config.data_dir / ".ksefd-batches" / company.name

    async def close_clients(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self.clients.clear()


async def wait_for(event: asyncio.Event, clock: Clock, seconds: float | None) -> bool:
    """Wait until `event` is set or `seconds` of the clock's time pass; True if the event was set.
    The event is cleared on return, so the next wait waits again."""
    if event.is_set():
        event.clear()
        return True
    if seconds is not None and seconds <= 0:
        await asyncio.sleep(0)
        return False
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(seconds)) if seconds is not None else None
    try:
        await asyncio.wait([t for t in (waiter, timer) if t is not None], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, timer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    fired = event.is_set()
    event.clear()
    return fired


async def sleep_unless_stopped(clock: Clock, stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` of the clock's time, or less if `stop` is set; True if it was. Unlike `wait_for`,
    the event is left as it is: a stop stays a stop for whoever looks next."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return stop.is_set()
