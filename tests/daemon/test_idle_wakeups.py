"""An idle daemon stays asleep (issue #16 point 4): with nothing to send, a company's outbox loops (dispatcher,
tracker, offline desk) look at the state database only when something wakes them, plus the safety net once an
hour; the heartbeat, an idle daemon's most frequent wake-up, is one statement."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from ksefd.clock import ManualClock, SystemClock
from ksefd.daemon.runtime import Runtime
from ksefd.daemon.service import serve
from ksefd.sim.config import SimConfig
from ksefd.store import Store
from tests.daemon.support import SELLER, drop, invoice, load, token_file, write_config


async def _quiet(statements: list[str], seconds: float = 0.5) -> None:
    """Until no statement ran for `seconds` of real time (the daemon finished what it was doing)."""
    seen = -1
    while seen != len(statements):
        seen = len(statements)
        await asyncio.sleep(seconds)


async def test_an_idle_company_is_looked_at_only_by_the_hourly_safety_net(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               daemon={"rescan_interval_seconds": 30}))
    statements: list[str] = []
    traced: list[Runtime] = []

    async def trace(runtime: Runtime) -> None:      # every statement the daemon sends to SQLite, from the start
        if not traced:
            traced.append(runtime)
            await runtime.store.db._conn.set_trace_callback(statements.append)

    def on_invoices() -> int:
        return sum(1 for s in statements if " invoices" in s)

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        daemon = asyncio.create_task(serve(config, stop, clock=clock, on_progress=trace))
        try:
            outbox = config.companies[0].folders.outbox
            async with asyncio.timeout(20):
                while not traced or not any(e["event"] == "daemon.connected" for e in logs):  # noqa: ASYNC110 (a log)
                    await asyncio.sleep(0.05)
            await _quiet(statements)
            before = on_invoices()
            for _ in range(11):                             # 55 minutes, 5 at a time
                clock.advance(300)
                await asyncio.sleep(0.1)
            await _quiet(statements)
            assert on_invoices() == before, "an idle company's loops looked at its invoices without being woken"

            clock.advance(400)                              # past the hour: the safety net still looks
            await _quiet(statements)
            assert on_invoices() > before
            looked = on_invoices()

            drop(outbox, "FV-1.xml", invoice("IDLE/1"))     # a drop is still taken at once (the watcher wakes intake)
            async with asyncio.timeout(10):
                while any(outbox.glob("*.xml")):  # noqa: ASYNC110 (a folder)
                    await asyncio.sleep(0.02)
            assert on_invoices() > looked
        finally:
            stop.set()
            await daemon


async def test_a_heartbeat_is_one_statement_committed_alone(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "state.sqlite3", SystemClock()) as store:
        statements: list[str] = []
        await store.db._conn.set_trace_callback(statements.append)
        await store.heartbeat.beat("daemon", {"companies": ["acme"]})
        await store.heartbeat.beat("daemon", {"companies": ["acme", "beta"]})
        await store.db._conn.set_trace_callback(None)
        assert len(statements) == 2 and all(s.startswith("INSERT INTO heartbeat") for s in statements)
        beats = await store.heartbeat.read()
    # Committed: another connection (`ksefd status`) reads the last beat.
    async with await Store.open(tmp_path / "state.sqlite3", SystemClock()) as other:
        assert [(b.component, b.detail) for b in await other.heartbeat.read()] == [
            (b.component, b.detail) for b in beats] == [("daemon", {"companies": ["acme", "beta"]})]
