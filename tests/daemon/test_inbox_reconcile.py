"""Issue #6, done means: invoices committed late behind the HWM are caught by reconciliation.

The simulator's `late` fault makes a share of invoices readable only `late_by` seconds after their
permanentStorageDate, after the HWM it reported had passed that date: exactly the late commits users of
other tools report. The incremental windows (adjacent, never overlapping, §6.4) cannot see them any more;
the nightly audit re-queries the past window for its metadata, reports what the inbox lacks (log,
status, metric, audit event) and fetches it: one by one when few, by an export when many.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.schedule import next_reconcile
from ksefd.daemon.inbox.status import read_inbox_status
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, inbox_files, open_store, send_batches, warsaw_day


async def late_scenario(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, count: int,
                        late_share: float) -> tuple[Any, ...]:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", hwm_lag_s=5,
                                             faults=f"late={late_share},late_by=600,seed=7"), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, count)
    clock.advance(60)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    worker = InboxWorker(buyer, context, store, clock)
    first = await worker.run_cycle()
    missing = {s.ksef_number for s in sent} - set(first.delivered)
    assert missing, "the late share should hide some invoices from the first cycle"
    clock.advance(15 * 60)                     # now they are readable, but behind the checkpoint
    second = await worker.run_cycle()
    assert second.packages == 1 and second.delivered == [] and not second.reconciled
    assert set(inbox_files(buyer.folders.inbox)) == {s.ksef_number for s in sent} - missing
    return clock, client, buyer, store, worker, sent, missing


async def test_a_few_late_commits_are_found_by_the_nightly_audit_and_downloaded_one_by_one(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock, client, buyer, store, worker, sent, missing = await late_scenario(sim_factory, http, tmp_path, 30, 0.3)
    try:
        assert len(missing) <= worker.pipeline.small_gap
        clock.set(next_reconcile(clock.now(), buyer.receiving.reconcile_at) + dt.timedelta(minutes=1))
        with capture_logs() as logs:
            report = await worker.run_cycle()
        [audit] = report.reconciled
        assert set(audit.missing) == missing and set(audit.fetched) == missing
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}
        assert worker.metrics.single_downloads == len(missing) and worker.metrics.metadata_exports == 1
        # Reported: the log (with the KSeF numbers), the status, the metric, the audit trail.
        [logged] = [e for e in logs if e["event"] == "inbox.reconcile_missing"]
        assert set(logged["ksef_numbers"]) == missing and logged["log_level"] == "warning"
        status = await read_inbox_status(store, "buyer")
        assert status is not None
        assert set(status["subjects"]["Subject2"]["reconcile"]["missing"]) == missing
        assert status["metrics"]["reconcile_missing"] == len(missing)
        [event] = [e for e in await store.events.recent("buyer") if e.kind == "inbox_reconcile"]
        assert event.detail["missingCount"] == len(missing)
        # Nightly: not again before the next night; then it finds nothing missing.
        clock.advance(16 * 60)
        assert (await worker.run_cycle()).reconciled == []
        clock.set(next_reconcile(clock.now(), buyer.receiving.reconcile_at) + dt.timedelta(minutes=1))
        [again] = (await worker.run_cycle()).reconciled
        assert again.missing == [] and again.checked == len(sent)
    finally:
        await store.close()
        await client.close()


async def test_many_late_commits_are_fetched_with_an_export_of_their_window(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    _, client, buyer, store, worker, sent, missing = await late_scenario(sim_factory, http, tmp_path, 100, 0.5)
    try:
        assert len(missing) > worker.pipeline.small_gap
        exports = worker.metrics.exports
        report = await worker.reconcile("Subject2")
        assert set(report.missing) == missing and set(report.fetched) == missing
        # One metadata-only export lists the window, one export fetches the missing invoices.
        assert worker.metrics.metadata_exports == 1 and worker.metrics.exports == exports + 2
        assert worker.metrics.single_downloads == 0
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}
        assert await store.inbox.delivered_count("buyer") == len(sent)
    finally:
        await store.close()
        await client.close()
