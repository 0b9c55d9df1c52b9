"""The offline desk on its own (issue #11 item 5): a deadline stored per invoice and mirrored in the invoices
table and NAME.offline.json, warnings at half and 90 % of the time, a loud flag once missed, and a failure
announced while an offline24 invoice waits moving its deadline. Real SQLite and folders, a manual clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from ksefd.clock import WARSAW, ManualClock
from ksefd.daemon.availability import KsefAvailability
from ksefd.daemon.outbox.files import OutboxFiles
from ksefd.daemon.outbox.ledger import Ledger
from ksefd.daemon.outbox.offline import REVIEW_SECONDS, OfflineDesk
from ksefd.daemon.outbox.offline_files import OfflineFiles
from ksefd.daemon.outbox.watch import OutboxWatcher
from ksefd.store import Announcement, InvoiceState, OfflineInvoice, Store
from tests.daemon.offline_support import offline_certificate, verify_kod2
from tests.daemon.support import SELLER, load, read_json, write_config

pytestmark = pytest.mark.usefixtures("english")   # the texts as their message ids (English)

S = InvoiceState


async def desk_for(tmp_path: Path, clock: ManualClock, **company: Any) -> tuple[OfflineDesk, Store, Any]:
    token = tmp_path / "t.token"
    token.write_text("x\n")
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER,
                                                                    "token_file": str(token), **company}]))
    company = config.companies[0]
    store = await Store.open(config.state_db, clock)
    files = OutboxFiles(company, company.folders.outbox / ".ksefd")
    files.prepare()
    log = structlog.get_logger("test")
    ledger = Ledger(company.name, store, files, clock.now, log)
    monitor = KsefAvailability("test", "", store, clock, interval=900, problem_interval=60)
    desk = OfflineDesk(company, ledger, OfflineFiles(company, "test"), monitor, clock, log, settle_seconds=0,
                       rescan_seconds=1, reserved=set())
    return desk, store, company


async def queued(store: Store, issue: dt.date, name: str = "FV-1.xml",
                 sha256: str = "UtQp9Gpc51y+u3xApZjIjgkpZ01js+J8KflSPW8WzIE=") -> Any:
    row = await store.invoices.add("acme", name, sha256, 100, seller_nip=SELLER, invoice_type="VAT",
                                   invoice_number=name, issue_date=issue)
    row = await store.invoices.transition(row.id, S.CLAIMED, S.CHECKED)
    return await store.invoices.transition(row.id, S.CHECKED, S.QUEUED)


async def test_deadline_warnings_missed_flag_and_a_failure_announced_while_waiting(tmp_path: Path) -> None:
    issued = dt.datetime(2026, 3, 4, 8, tzinfo=WARSAW)          # Wednesday: offline24 by the end of Thursday
    clock = ManualClock(issued)
    desk, store, company = await desk_for(tmp_path, clock)
    try:
        row = await queued(store, issued.date())
        moved = await desk.issue(row, "offline24", "test", "offline24")
        assert moved is not None and moved.state == S.OFFLINE and moved.offline
        deadline = dt.datetime(2026, 3, 6, 0, tzinfo=WARSAW)
        assert moved.offline_deadline == deadline
        body = read_json(company.folders.offline / "FV-1.offline.json")
        assert body["deadline"] == deadline.astimezone(dt.UTC).isoformat() and body["lastDayToSend"] == "2026-03-05"
        assert body["kod1"]["label"] == "OFFLINE"
        half = issued + (deadline - issued) / 2
        with capture_logs() as logs:
            clock.set(half - dt.timedelta(minutes=1))
            await desk.review()
            clock.set(half + dt.timedelta(minutes=1))
            await desk.review()
            await desk.review()
            clock.set(issued + (deadline - issued) * 0.95)
            await desk.review()
            clock.set(deadline + dt.timedelta(seconds=1))
            await desk.review()
            await desk.review()
        events = [e["event"] for e in logs if e["event"].startswith("offline.")]
        assert events == ["offline.deadline_half", "offline.deadline_near", "offline.deadline_missed"]
        record = await store.offline.get(row.id)
        assert record is not None and record.missed and record.warned == 90
        assert read_json(company.folders.offline / "FV-1.offline.json")["deadlineMissed"] is True
        # A failure announced while it waits: 7 business days after it ends (PROTOCOL.md §8.1).
        began = dt.datetime(2026, 3, 6, 9, tzinfo=WARSAW)
        assert desk.monitor is not None
        desk.monitor.history = [Announcement("1-start", 1, "FAILURE", "FAILURE_START", "Awaria", "", began, None, 1,
                                             began)]
        desk.monitor.version += 1
        clock.set(began + dt.timedelta(hours=1))
        await desk.review()
        assert (await store.invoices.get(row.id)).offline_deadline is None     # type: ignore[union-attr]
        ended = dt.datetime(2026, 3, 6, 15, tzinfo=WARSAW)
        desk.monitor.history.append(Announcement("1-end", 1, "FAILURE", "FAILURE_END", "Awaria", "", began, ended, 1,
                                                 ended))
        desk.monitor.version += 1
        await desk.review()
        moved_to = dt.datetime(2026, 3, 18, 0, tzinfo=WARSAW)               # 9..13, 16, 17 March
        assert (await store.invoices.get(row.id)).offline_deadline == moved_to  # type: ignore[union-attr]
        body = read_json(company.folders.offline / "FV-1.offline.json")
        assert body["deadline"] == moved_to.astimezone(dt.UTC).isoformat() and "failure" in body["deadlineRule"]
        assert body["lastDayToSend"] == "2026-03-17"
    finally:
        await store.close()


async def test_a_crash_between_the_step_and_the_artefacts_is_repaired(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 4, 8, tzinfo=WARSAW))
    desk, store, company = await desk_for(tmp_path, clock)
    try:
        row = await queued(store, dt.date(2026, 3, 4))
        await desk.issue(row, "failure", "test", "failure", 1)
        path = company.folders.offline / "FV-1.offline.json"
        path.unlink()                                  # as if killed right after the OFFLINE step
        again, _, _ = await desk_for(tmp_path, clock)
        await again.repair()
        assert read_json(path)["mode"] == "failure" and (company.folders.offline / "FV-1.kod1.png").exists()
        await again.store.db.close()
    finally:
        await store.close()


async def test_kod2_follows_a_renewed_offline_certificate(tmp_path: Path) -> None:
    """A renewal replaces the certificate's files in place (certificate_switch.py): the next KOD II uses it."""
    clock = ManualClock(dt.datetime(2026, 3, 4, 8, tzinfo=WARSAW))
    cert, key = offline_certificate(tmp_path, "first", SELLER, "ec")
    desk, store, company = await desk_for(tmp_path, clock, offline_certificate=str(cert), offline_private_key=str(key))
    try:
        await desk.issue(await queued(store, dt.date(2026, 3, 4)), "failure", "test", "failure", 1)
        first = read_json(company.folders.offline / "FV-1.offline.json")["kod2"]["link"]
        verify_kod2(first, cert)
        newer_cert, newer_key = offline_certificate(tmp_path, "second-renewed", SELLER, "rsa")
        cert.write_bytes(newer_cert.read_bytes())
        key.write_bytes(newer_key.read_bytes())
        row = await queued(store, dt.date(2026, 3, 4), "FV-2.xml", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
        await desk.issue(row, "failure", "test", "failure", 1)
        second = read_json(company.folders.offline / "FV-2.offline.json")["kod2"]["link"]
        verify_kod2(second, cert)
        assert first.split("/")[7] != second.split("/")[7]          # another certificate serial
    finally:
        await store.close()


async def test_a_record_left_by_a_crash_before_the_step_is_replaced(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 4, 8, tzinfo=WARSAW))
    desk, store, _ = await desk_for(tmp_path, clock)
    try:
        row = await queued(store, dt.date(2026, 3, 4))
        stale = OfflineInvoice(row.id, "acme", "failure", "killed before the step", 3, clock.now(), None, "FV-1",
                               False, 90, True, None, None)
        await store.offline.add(stale)                       # the record, but the invoice is still QUEUED
        clock.advance(3600)
        moved = await desk.issue(row, "offline24", "requested", "offline24")
        record = await store.offline.get(row.id)
        assert moved is not None and record is not None
        assert (record.mode, record.warned, record.missed, record.issued_at) == ("offline24", 0, False, clock.now())
    finally:
        await store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")
async def test_a_watched_desk_sleeps_long_unless_an_offline_invoice_waits_for_its_deadline(tmp_path: Path) -> None:
    """Issue #16 point 4: with outbox/offline/ watched (inotify, local disk) an idle desk is not woken every
    rescan; while an invoice issued offline waits, its deadline and warnings are still looked at every minute."""
    clock = ManualClock(dt.datetime(2026, 3, 4, 8, tzinfo=WARSAW))
    desk, store, _company = await desk_for(tmp_path, clock)
    desk.rescan_seconds = 30.0
    watcher, stop = OutboxWatcher(), asyncio.Event()
    watcher.register(desk.requests, desk.ledger.offline_due, create=True)
    desk.watcher = watcher
    task = asyncio.create_task(watcher.run(stop))
    try:
        async with asyncio.timeout(5):
            while watcher.rescan_interval(desk.requests, 30.0) == 30.0:  # noqa: ASYNC110 (the watcher starts)
                await asyncio.sleep(0.01)
        assert await desk.step() > REVIEW_SECONDS                 # nothing to look after: no minute wake-ups
        row = await queued(store, clock.now().date())
        assert await desk.issue(row, "offline24", "test", "offline24") is not None
        clock.advance(REVIEW_SECONDS)
        assert await desk.step() <= REVIEW_SECONDS
    finally:
        stop.set()
        await task
        await store.close()
