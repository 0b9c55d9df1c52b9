"""The inbox pipeline (issue #6) against the simulator over HTTP, with real SQLite and real folders."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import (
    buyer_context,
    company,
    inbox_files,
    open_store,
    seller_token,
    send_batches,
    warsaw_day,
)


async def start(sim_factory: Any, clock: ManualClock, **settings: Any) -> Any:
    return await sim_factory(config=SimConfig(limits_profile="off", **settings), clock=clock)


async def test_delivers_every_incoming_invoice_once_across_truncated_packages(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await start(sim_factory, clock, query_cap=50, hwm_lag_s=5)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 120)
    clock.advance(60)                                    # everything is behind the HWM now
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock)
        report = await worker.run_cycle()
        assert not report.failures
        delivered = inbox_files(buyer.folders.inbox)
        assert delivered == {s.ksef_number: s.xml for s in sent}
        # 50, then 1 + 49 (the boundary invoice again, §6.4 step 4), then 1 + 21: the last one is complete.
        assert worker.metrics.exports == 3
        assert worker.metrics.packages_truncated == 2
        assert worker.metrics.duplicates_skipped == 2
        for s in sent[:5]:
            meta = json.loads((buyer.folders.inbox / f"{s.ksef_number}.json").read_bytes())
            assert meta["ksefNumber"] == s.ksef_number and meta["invoiceHash"] == sha256_b64(s.xml)
        assert await store.inbox.delivered_count("buyer") == 120
        # A cycle before 15 minutes have passed does nothing; after, it exports once and finds nothing new.
        again = await worker.run_cycle()
        assert again.packages == 0 and worker.metrics.exports == 3
        clock.advance(15 * 60)
        again = await worker.run_cycle()
        assert again.delivered == [] and again.packages == 1 and worker.metrics.exports == 4
    finally:
        await store.close()
        await client.close()


class Buyer:
    """The buyer's side of a test: its KSeF context, config, state store and inbox worker."""

    def __init__(self, client: Any, context: Any, company: Any, store: Any, clock: ManualClock) -> None:
        self.client, self.context, self.company, self.store, self.clock = client, context, company, store, clock

    def worker(self, **options: Any) -> InboxWorker:
        return InboxWorker(self.company, self.context, self.store, self.clock, **options)

    @property
    def inbox(self) -> Path:
        return self.company.folders.inbox

    async def close(self) -> None:
        await self.store.close()
        await self.client.close()


async def buyer(sim: Any, http: aiohttp.ClientSession, clock: ManualClock, tmp_path: Path, receiving: str = "",
                **options: Any) -> Buyer:
    client, context, token = await buyer_context(http, sim.base_url, clock)
    found = company(tmp_path, token, base_url=sim.base_url, receiving=receiving, **options)
    return Buyer(client, context, found, await open_store(tmp_path / "state.sqlite3", clock), clock)


def yesterday(clock: ManualClock) -> str:
    return f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}"


async def test_year_month_layout_puts_each_invoice_under_the_month_of_its_ksef_number(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await start(sim_factory, clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 5)
    clock.advance(60)
    b = await buyer(sim, http, clock, tmp_path, f'{yesterday(clock)}\ninbox_layout = "year-month"')
    try:
        await b.worker().run_cycle()
        for s in sent:
            day = s.ksef_number.split("-")[1]
            folder = b.inbox / day[:4] / day[4:6]
            assert (folder / f"{s.ksef_number}.xml").read_bytes() == s.xml
            assert (folder / f"{s.ksef_number}.json").is_file()
            assert (await b.store.inbox.delivery("buyer", s.ksef_number)).path == \
                f"{day[:4]}/{day[4:6]}/{s.ksef_number}.xml"
    finally:
        await b.close()


async def test_an_invoice_is_never_delivered_twice_even_after_the_erp_moved_it_away(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await start(sim_factory, clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 10)
    clock.advance(60)
    b = await buyer(sim, http, clock, tmp_path, yesterday(clock))
    try:
        first = await b.worker().run_cycle()
        assert len(first.delivered) == 10
        taken = tmp_path / "erp"
        taken.mkdir()
        for path in b.inbox.iterdir():                         # the ERP imports and moves everything away
            path.rename(taken / path.name)
        # A checkpoint set back (as if the process died before moving it) and a fresh worker (a restart):
        # the same window is exported again, and nothing reaches the inbox a second time.
        await b.store.inbox.advance("buyer", "Subject2", clock.now() - dt.timedelta(days=2))
        clock.advance(15 * 60)
        restarted = b.worker()
        again = await restarted.run_cycle()
        assert again.packages == 1 and again.delivered == []
        assert restarted.metrics.duplicates_skipped == 10
        assert list(b.inbox.iterdir()) == []
        assert sorted(p.stem for p in taken.glob("*.xml")) == sorted(s.ksef_number for s in sent)
    finally:
        await b.close()


async def test_backfill_now_starts_at_the_first_run_and_keeps_it_across_restarts(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await start(sim_factory, clock)
    await send_batches(http, sim.base_url, clock, tmp_path, 3, prefix="OLD")    # history: not wanted
    clock.advance(60)
    b = await buyer(sim, http, clock, tmp_path, 'backfill_from = "now"')
    try:
        first_run = clock.now()
        report = await b.worker().run_cycle()                # nothing after the start is final yet: export 420
        assert report.delivered == [] and not report.failures
        checkpoint = await b.store.inbox.checkpoint("buyer", "Subject2")
        assert checkpoint is not None and checkpoint.next_from == first_run
        new = await send_batches(http, sim.base_url, clock, tmp_path, 3, prefix="NEW")
        clock.advance(15 * 60)
        report = await b.worker().run_cycle()                 # a new worker: the start was persisted
        assert sorted(report.delivered) == sorted(s.ksef_number for s in new)
        assert inbox_files(b.inbox) == {s.ksef_number: s.xml for s in new}
    finally:
        await b.close()


async def test_by_default_the_first_run_receives_from_the_first_day_of_the_previous_month(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Issue #10 point 5: a new user gets the purchases of the VAT period still being booked, and the first
    start logs the window; `ksefd status` shows where receiving started."""
    from structlog.testing import capture_logs

    from ksefd.clock import WARSAW
    from ksefd.daemon.inbox.status import receiving_since
    from ksefd.daemon.inbox.worker import first_day_of_previous_month
    from ksefd.daemon.status import DaemonStatus, _company, render
    from ksefd.daemon.status_text import when

    now = dt.datetime.now(dt.UTC)
    boundary = dt.datetime.combine(first_day_of_previous_month(now), dt.time(), tzinfo=WARSAW)
    assert boundary.day == 1 and (now.astimezone(WARSAW) - boundary).days in range(28, 63)
    clock = ManualClock(boundary - dt.timedelta(days=3))
    sim = await start(sim_factory, clock)
    token = await seller_token(http, sim.base_url, valid_from=clock.now() - dt.timedelta(days=1))
    clock.set(boundary - dt.timedelta(hours=1))             # the evening before: not wanted
    await send_batches(http, sim.base_url, clock, tmp_path, 2, prefix="OLD", token=token)
    clock.set(boundary + dt.timedelta(minutes=30))          # just after midnight, Polish time: wanted
    previous = await send_batches(http, sim.base_url, clock, tmp_path, 2, prefix="PREV", token=token)
    clock.set(now - dt.timedelta(hours=1))
    recent = await send_batches(http, sim.base_url, clock, tmp_path, 2, prefix="NOW", token=token)
    clock.set(now)
    b = await buyer(sim, http, clock, tmp_path)                   # no backfill_from
    assert b.company.receiving.backfill_from is None
    try:
        with capture_logs() as logs:
            report = await b.worker().run_cycle()
        assert not report.failures
        assert inbox_files(b.inbox) == {s.ksef_number: s.xml for s in previous + recent}
        first = [e for e in logs if e["event"] == "inbox.first_window"]
        assert len(first) == 1 and first[0]["start_local"] == boundary.isoformat()
        assert await receiving_since(b.store, "buyer") == boundary.astimezone(dt.UTC).isoformat()
        shown = await _company(b.store, "buyer", b.company.nip, False, True, now, "en")
        text = render(DaemonStatus(False, None, None, [shown], language="en"))
        assert f"receiving: invoices since {when(boundary)}" in text        # Warsaw time, for people
    finally:
        await b.close()


def test_backfill_from_takes_a_date_now_or_nothing_and_names_the_fix_otherwise(tmp_path: Path) -> None:
    import pytest

    from ksefd.config import ConfigError

    def parsed(line: str) -> Any:
        return company(tmp_path, "t", base_url="http://127.0.0.1:9/v2", receiving=line).receiving.backfill_from

    assert parsed("") is None
    assert parsed("backfill_from = 2026-02-01") == dt.date(2026, 2, 1)
    assert parsed('backfill_from = "2026-02-01"') == dt.date(2026, 2, 1)
    assert parsed('backfill_from = "now"') == "now"
    with pytest.raises(ConfigError) as caught:
        parsed('backfill_from = "yesterday"')
    assert re.search(r"backfill_from: \"yesterday\" is not a date.*\"now\"", "\n".join(caught.value.english))
    assert 'backfill_from: "yesterday" to nie jest data' in str(caught.value)          # Polish by default


async def test_a_backfill_older_than_100_days_runs_in_adjacent_windows_of_at_most_100_days(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    clock = ManualClock(now - dt.timedelta(days=130))
    sim = await start(sim_factory, clock)
    token = await seller_token(http, sim.base_url, valid_from=clock.now() - dt.timedelta(days=1))
    old = await send_batches(http, sim.base_url, clock, tmp_path, 4, prefix="OLD", token=token)
    clock.set(now - dt.timedelta(days=20))
    recent = await send_batches(http, sim.base_url, clock, tmp_path, 4, prefix="NEW", token=token)
    clock.set(now)
    b = await buyer(sim, http, clock, tmp_path, f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=150)}")
    try:
        worker = b.worker()
        report = await worker.run_cycle()                     # the simulator refuses a window over 100 days (21405)
        assert not report.failures
        assert worker.metrics.exports == 2
        assert inbox_files(b.inbox) == {s.ksef_number: s.xml for s in old + recent}
    finally:
        await b.close()


def test_names_from_the_network_are_validated_before_they_become_paths(tmp_path: Path) -> None:
    import pytest

    from ksefd.daemon.inbox.delivery import relative_path
    from ksefd.ksef.errors import ProtocolError

    good = "5265877635-20261122-0A1B2C3D4E5F-8E"
    assert str(relative_path(good, "flat")) == f"{good}.xml"
    assert str(relative_path(good, "year-month")) == f"2026/11/{good}.xml"
    for bad in ("../../etc/passwd", f"{good}/../x", f"..\\{good}", f"{good}.xml", "", f"/{good}", good + "\x00",
                "5265877635-20261122-0A1B2C3D4E5F-8E\n"):
        with pytest.raises(ProtocolError):
            relative_path(bad, "flat")


async def test_run_forever_stops_at_once_even_while_waiting_for_the_hourly_budget(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    import asyncio

    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await start(sim_factory, clock, query_cap=10)
    await send_batches(http, sim.base_url, clock, tmp_path, 25)
    clock.advance(60)
    b = await buyer(sim, http, clock, tmp_path, yesterday(clock))
    try:
        worker = b.worker(hourly_budget=2)              # two exports, then an hour's wait for the third
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run_forever(stop))
        for _ in range(1000):
            if clock.sleepers and worker.metrics.exports == 2:
                break
            await asyncio.sleep(0.01)
        assert worker.metrics.exports == 2 and len(inbox_files(b.inbox)) == 19
        stop.set()
        await asyncio.wait_for(running, 2)              # no need to wait out the hour
        checkpoint = await b.store.inbox.checkpoint("buyer", "Subject2")
        assert checkpoint is not None and checkpoint.last_cycle_at is None     # that cycle did not finish
        # Restarted later, it carries on from its checkpoint.
        clock.advance(3600)
        report = await b.worker().run_cycle()
        assert len(report.delivered) == 6 and len(inbox_files(b.inbox)) == 25
    finally:
        await b.close()
