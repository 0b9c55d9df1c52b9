"""Issue #6, done means: 25 000 incoming invoices across truncated packages arrive exactly once.

The simulator's package cap (SimConfig.query_cap, 10 000 on KSeF) is lowered to 2 500 so that the 25 000
invoices span eleven packages, ten of them truncated, while the test stays around a minute: the same code
path as 10 000-invoice packages (truncation, continuing from lastPermanentStorageDate, the boundary
invoice seen twice), with a tenth of the archive size per package.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef.export import ExportOptions
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, inbox_files, open_store, send_batches, warsaw_day

COUNT = 25_000
CAP = 2_500


@pytest.mark.timeout(900)
async def test_25000_invoices_across_truncated_packages_arrive_exactly_once(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", query_cap=CAP), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, COUNT)
    assert len({s.ksef_number for s in sent}) == COUNT
    clock.advance(60)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url, receiving=f"""
        backfill_from = {warsaw_day(clock) - dt.timedelta(days=2)}
        inbox_layout = "year-month"
        """)
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock, export_options=ExportOptions(poll_first=0.05))
        started = time.monotonic()
        report = await worker.run_cycle()
        elapsed = time.monotonic() - started
        assert not report.failures
        assert sorted(report.delivered) == sorted(s.ksef_number for s in sent)     # each once
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}
        packages = 1 + math.ceil((COUNT - CAP) / (CAP - 1))     # every later package repeats its boundary invoice
        assert worker.metrics.exports == packages == 11
        assert worker.metrics.packages_truncated == packages - 1
        assert worker.metrics.duplicates_skipped == packages - 1
        assert await store.inbox.delivered_count("buyer") == COUNT
        assert not [p for p in buyer.folders.inbox.rglob("*") if p.name.startswith(".")]
        print(f"\n{COUNT} invoices delivered in {elapsed:.1f} s ({COUNT / elapsed:.0f}/s), {packages} exports")
    finally:
        await store.close()
        await client.close()
