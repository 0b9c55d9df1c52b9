"""Issue #16 goal 2: the next package's export starts while a package is delivered, and no kill spends it twice.

* A backfill over several truncated packages starts each next export before the package before it is done
  (KSeF builds it meanwhile), and still spends exactly one export per package.
* A kill -9 after the next package's export was started (and while the current one is delivered): the
  restarted daemon downloads both recorded exports instead of starting new ones (20 exports an hour,
  PROTOCOL.md §6.4), and delivers every invoice exactly once.
* A recorded export KSeF no longer knows (expired, or never built) is dropped, and a new one is started at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.delivery import InboxFolder, ReceivedInvoice, Staged
from ksefd.daemon.inbox.started import NAMESPACE, StartedExports
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef import ZIP, StartedExport, format_instant, query_filters
from ksefd.ksef.crypto import SymmetricKey
from ksefd.ksef.export import ExportOptions
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, inbox_files, open_store, send_batches, warsaw_day

QUICK = ExportOptions(poll_first=0.02, poll_max=0.1)
CAP = 100


class Killed(BaseException):
    """Stands for kill -9: nothing in the daemon catches it."""


class KilledOnceNextIsRecorded(InboxFolder):
    """The process dies as the first package's files are about to be written, once the next package's export
    has been started and recorded."""

    def __init__(self, root: Path, recorded: threading.Event) -> None:
        super().__init__(root)
        self.recorded = recorded

    def stage_many(self, invoices: list[ReceivedInvoice]) -> list[Staged | OSError]:
        assert self.recorded.wait(10)
        raise Killed


async def seeded(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, count: int) -> tuple[
        ManualClock, Any, dict[str, bytes]]:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", query_cap=CAP), clock=clock)
    sent = {s.ksef_number: s.xml for s in await send_batches(http, sim.base_url, clock, tmp_path, count)}
    clock.advance(60)
    return clock, sim, sent


async def test_the_next_export_starts_while_a_package_is_delivered(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock, sim, sent = await seeded(sim_factory, http, tmp_path, 250)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock, export_options=QUICK)
        with capture_logs() as logs:
            report = await worker.run_cycle()
        assert not report.failures and inbox_files(buyer.folders.inbox) == sent
        events = [(e["event"], e.get("export")) for e in logs
                  if e["event"] in ("ksef.export_started", "inbox.package_done")]
        exports = [ref for event, ref in events if event == "ksef.export_started"]
        # one export per package (each after the first repeats its boundary invoice: 250 in 100, 100, 52)
        assert len(exports) == report.packages == worker.metrics.exports == 3
        for before, after in itertools.pairwise(exports):
            assert events.index(("ksef.export_started", after)) < events.index(("inbox.package_done", before))
        assert await store.kv.items(NAMESPACE) == {}               # every record dropped once delivered
    finally:
        await store.close()
        await client.close()


async def test_a_kill_after_the_next_export_started_spends_no_export_again(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, sim, sent = await seeded(sim_factory, http, tmp_path, 250)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    recorded = threading.Event()
    keep = StartedExports.keep

    async def keep_and_tell(self: StartedExports, subject_type: str, started: StartedExport) -> None:
        await keep(self, subject_type, started)
        if len(await self.kv.items(NAMESPACE)) == 2:          # this package's and the next one's
            recorded.set()

    monkeypatch.setattr(StartedExports, "keep", keep_and_tell)
    try:
        store = await open_store(tmp_path / "state.sqlite3", clock)
        try:
            worker = InboxWorker(buyer, context, store, clock, export_options=QUICK,
                                 folder=KilledOnceNextIsRecorded(buyer.folders.inbox, recorded))
            with pytest.raises(Killed):
                await worker.run_cycle()
            assert worker.metrics.exports == 2
        finally:
            await store.close()
        assert inbox_files(buyer.folders.inbox) == {}

        store = await open_store(tmp_path / "state.sqlite3", clock)          # the restarted daemon
        try:
            worker = InboxWorker(buyer, context, store, clock, export_options=QUICK)
            with capture_logs() as logs:
                report = await worker.run_cycle()
            assert not report.failures and report.packages == 3
            assert worker.metrics.exports == 1                  # only the third window's: both recorded ones used
            assert not [e for e in logs if e["event"] == "inbox.recorded_export_unusable"]
            assert inbox_files(buyer.folders.inbox) == sent     # nothing lost, byte for byte
            assert await store.inbox.delivered_count("buyer") == len(sent)
            assert await store.kv.items(NAMESPACE) == {}
        finally:
            await store.close()
    finally:
        await client.close()


async def test_a_recorded_export_ksef_does_not_know_is_replaced_at_once(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock, sim, sent = await seeded(sim_factory, http, tmp_path, 50)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock, export_options=QUICK)
        start = format_instant(worker._initial_start())
        filters = query_filters("Subject2", start, None, now=clock.now())
        gone = StartedExport("20250101-EH-0000000000-0000000000-00", SymmetricKey.generate(), ZIP, filters)
        await worker.pipeline.started.keep("Subject2", gone)
        with capture_logs() as logs:
            report = await worker.run_cycle()
        assert not report.failures and inbox_files(buyer.folders.inbox) == sent
        assert [e["export"] for e in logs if e["event"] == "inbox.recorded_export_unusable"] == [gone.reference_number]
        assert worker.metrics.exports == 1
        assert await store.kv.items(NAMESPACE) == {}
    finally:
        await store.close()
        await client.close()
