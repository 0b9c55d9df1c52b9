"""Time-driven behaviour with an injectable clock (no sleeping): a transient failure is deferred with
capped exponential backoff and retried at exactly `next_attempt_at`; an idle online session is closed after
`online_idle_close_seconds` and its session UPO saved (issue #5 items 4 and 6)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.clock import ManualClock
from ksefd.config import Config, SendingOptions
from ksefd.daemon.failures import backoff_seconds
from ksefd.daemon.service import serve
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceRow, InvoiceState, SessionState, Store
from tests.daemon.support import SELLER, drop, invoice, load, sim_records, token_file, write_config


def test_backoff_doubles_and_is_capped() -> None:
    options = SendingOptions(retry_min_seconds=60, retry_max_seconds=3600)
    assert [backoff_seconds(options, n) for n in (1, 2, 3, 7, 8, 30)] == [60, 120, 240, 3600, 3600, 3600]
    assert backoff_seconds(options, 1, retry_after=900) == 900      # never before KSeF's Retry-After


async def _rows(config: Config) -> list[InvoiceRow]:
    async with await Store.open(config.state_db) as store:
        return await store.invoices.in_state("acme", *InvoiceState)


async def _drive(clock: ManualClock, check: Callable[[], Awaitable[bool]], step: float, limit: float) -> None:
    """Move the clock in steps while the daemon waits, until `check` holds (at most `limit` clock seconds)."""
    end = clock.now() + dt.timedelta(seconds=limit)
    while not await check():
        assert clock.now() < end, "the condition did not come true in time"
        await asyncio.sleep(0.02)      # let the daemon and the simulator do their (real) I/O
        clock.advance(step)


async def test_deferred_with_backoff_then_sent_and_idle_session_closed(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", faults="unavailable=1"), clock=clock)
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               sending={"retry_min_seconds": 60, "retry_max_seconds": 600,
                                        "online_idle_close_seconds": 120}))
    drop(config.companies[0].folders.outbox, "FV.xml", invoice("CLOCK/1"))
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(config, stop, clock=clock))
    try:
        async def deferred() -> bool:
            return [r.state for r in await _rows(config)] == [InvoiceState.DEFERRED]
        await _drive(clock, deferred, 0.05, 5)
        row = (await _rows(config))[0]
        # KSeF said 21184 in every session tried: not taken; retried after retry_min, not before.
        assert row.next_attempt_at == row.updated_at + dt.timedelta(seconds=60) and row.attempts == 1
        assert row.last_error["code"] == "ksef-21184"
        async with http.delete(f"{sim.root_url}/sim/faults") as resp:       # the maintenance ends
            assert resp.status == 200
        await _drive(clock, lambda: _before(clock, row), 1.0, 120)
        assert [r["status"]["code"] for r in sim_records(sim)] == []          # nothing accepted before the time

        async def done() -> bool:
            return [r.state for r in await _rows(config)] == [InvoiceState.DONE]
        await _drive(clock, done, 0.2, 60)
        accepted_at = clock.now()

        async def session_done() -> bool:
            async with await Store.open(config.state_db) as store:
                found = await store.sessions.get((await _rows(config))[0].session_id or 0)
            return found is not None and found.state == SessionState.DONE
        await _drive(clock, session_done, 1.0, 200)
        assert clock.now() - accepted_at >= dt.timedelta(seconds=115)       # closed after being idle, not before
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 30)


async def _before(clock: ManualClock, row: InvoiceRow) -> bool:
    assert row.next_attempt_at is not None
    return clock.now() >= row.next_attempt_at - dt.timedelta(seconds=1)
