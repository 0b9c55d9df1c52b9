"""The outbox's parts built on their own, without the daemon (issue #9): the ledger, intake and the online
channel, each with real SQLite, real folders and, for the channel, the simulator over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from ksefd.clock import ManualClock, SystemClock
from ksefd.config import Company
from ksefd.daemon.connection import CompanyConnection
from ksefd.daemon.failures import Failure
from ksefd.daemon.outbox.files import OutboxFiles
from ksefd.daemon.outbox.intake import Intake
from ksefd.daemon.outbox.ledger import Ledger
from ksefd.daemon.outbox.online import OnlineChannel
from ksefd.daemon.outbox.outcomes import Outcomes
from ksefd.daemon.runtime import Runtime
from ksefd.ksef.ratelimit import RateLimiter
from ksefd.store import IllegalTransition, InvoiceState, SessionState, Store
from tests.daemon.support import SELLER, drop, invoice, load, one_company, sim_records, write_config

S = InvoiceState
LOG = structlog.get_logger("test")


def _company(tmp_path: Path) -> Company:
    (tmp_path / "acme.token").write_text("unused\n")
    return load(write_config(tmp_path, "http://127.0.0.1:9/v2", [
        {"name": "acme", "nip": SELLER, "token_file": "acme.token"}])).companies[0]


async def _ledger(tmp_path: Path, company: Company, clock: Any) -> tuple[Store, OutboxFiles, Ledger]:
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    files = OutboxFiles(company, company.folders.outbox / ".ksefd")
    files.prepare()
    return store, files, Ledger(company.name, store, files, clock.now, LOG)


def _state(company: Company, name: str) -> Any:
    path = company.folders.outbox / f"{name}.state.json"
    return json.loads(path.read_text()) if path.exists() else None


async def test_the_ledger_moves_writes_the_state_file_and_wakes_the_right_loop(tmp_path: Path) -> None:
    company = _company(tmp_path)
    store, _, ledger = await _ledger(tmp_path, company, ManualClock(dt.datetime(2026, 12, 6, tzinfo=dt.UTC)))
    async with store:
        row = await store.invoices.add("acme", "FV-1.xml", "hash", 10)
        checked = await ledger.move(row, S.CHECKED, state_file=False)
        assert _state(company, "FV-1") is None and not ledger.dispatch_due.is_set()
        queued = await ledger.move(checked, S.QUEUED)
        assert _state(company, "FV-1")["state"] == "queued"
        assert ledger.dispatch_due.is_set() and not ledger.track_due.is_set()
        ledger.dispatch_due.clear()

        with pytest.raises(IllegalTransition):               # store/states.py is the only map of moves
            await ledger.move(queued, S.DONE)
        assert _state(company, "FV-1")["state"] == "queued"

        submitting = await ledger.move(queued, S.SUBMITTING, show={"sessionReferenceNumber": "REF"})
        assert _state(company, "FV-1")["sessionReferenceNumber"] == "REF" and not ledger.track_due.is_set()
        await ledger.move(submitting, S.PROCESSING, invoice_ref="INV-REF")
        assert ledger.track_due.is_set() and _state(company, "FV-1")["invoiceReferenceNumber"] == "INV-REF"


async def test_the_ledger_rejects_into_rejected_and_holds_and_releases_waiting_invoices(tmp_path: Path) -> None:
    company = _company(tmp_path)
    store, files, ledger = await _ledger(tmp_path, company, SystemClock())
    async with store:
        work = files.new_work_path("BAD.xml")
        work.write_bytes(b"<not-an-invoice/>")
        bad = await store.invoices.add("acme", "BAD.xml", "h1", 17, work_path=str(work))
        await ledger.reject(bad, {"stage": "local-check", "code": "xsd", "message": "nope"})
        assert (company.folders.rejected / "BAD.xml").read_bytes() == b"<not-an-invoice/>"
        assert json.loads((company.folders.rejected / "BAD.error.json").read_text())["code"] == "xsd"
        assert not work.exists() and _state(company, "BAD") is None

        rows = [await store.invoices.add("acme", f"FV-{n}.xml", f"h{n}", 10) for n in range(3)]
        queued = [await ledger.move(await ledger.move(r, S.CHECKED), S.QUEUED) for r in rows]
        failure = Failure("hold", "credentials", "the token file cannot be read")
        await ledger.hold_waiting(failure, busy={queued[2].id})   # a send task holds the third one
        states = {r.file_name: r.state for r in await store.invoices.in_state("acme", *InvoiceState)}
        assert states == {"BAD.xml": S.REJECTED, "FV-0.xml": S.HELD, "FV-1.xml": S.HELD, "FV-2.xml": S.QUEUED}
        assert _state(company, "FV-0")["hold"] == "the token file cannot be read"
        assert await ledger.release_held() == 2
        assert {r.state for r in await store.invoices.in_state("acme", S.QUEUED, S.HELD)} == {S.QUEUED}


async def test_intake_alone_claims_checks_and_queues_or_rejects(tmp_path: Path) -> None:
    company = _company(tmp_path)
    clock = SystemClock()
    store, files, ledger = await _ledger(tmp_path, company, clock)
    async with store:
        intake = Intake(company, ledger, files, clock, settle_seconds=0, rescan_interval_seconds=1,
                        heavy=asyncio.Semaphore(1), log=LOG)
        drop(company.folders.outbox, "GOOD.xml", invoice("PARTS/1"))
        drop(company.folders.outbox, "WRONG-SELLER.xml", invoice("PARTS/2", seller="5265877635"))
        assert await intake.scan_once() + await intake.scan_once() == 2     # seen, then stable
        rows = {r.file_name: r for r in await store.invoices.in_state("acme", *InvoiceState)}
        assert rows["GOOD.xml"].state == S.QUEUED and rows["GOOD.xml"].invoice_number == "PARTS/1"
        assert rows["WRONG-SELLER.xml"].state == S.REJECTED
        assert (company.folders.rejected / "WRONG-SELLER.error.json").exists()
        assert _state(company, "GOOD") is None and ledger.dispatch_due.is_set()   # written once it has waited
        await ledger.show_owed()                                                   # (ledger.SHOW_QUEUED_AFTER)
        assert _state(company, "GOOD")["state"] == "queued"
        assert sorted(p.name for p in company.folders.outbox.iterdir()) == [".ksefd", "GOOD.state.json"]


async def test_the_online_channel_alone_sends_one_invoice_into_ksef(sim_factory: Any, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    company = config.companies[0]
    clock = SystemClock()
    store, files, ledger = await _ledger(tmp_path, company, clock)
    limiter = RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep)
    runtime = Runtime(config, store, clock, limiter)
    try:
        connection = CompanyConnection(runtime, company)
        assert await connection.ready() is None
        outcomes = Outcomes(company, ledger, files, connection, LOG)
        channel = OnlineChannel(company, ledger, outcomes, files, connection, LOG)
        work = files.new_work_path("FV-1.xml")
        work.write_bytes(invoice("CHANNEL/1"))
        row = await store.invoices.add("acme", "FV-1.xml", "x", 1, work_path=str(work))
        row = await ledger.move(await ledger.move(row, S.CHECKED), S.QUEUED)
        assert await channel.send(row) is None
        sent = await store.invoices.get(row.id)
        assert sent is not None and sent.state == S.PROCESSING and sent.invoice_ref
        assert [r["referenceNumber"] for r in sim_records(sim)] == [sent.invoice_ref]
        assert ledger.track_due.is_set() and channel.current is not None
        await channel.close_current("test")
        assert sent.session_id is not None
        session = await store.sessions.get(sent.session_id)
        assert session is not None and session.state == SessionState.CLOSED
    finally:
        await runtime.close_clients()
        await store.close()


async def test_intake_cleans_up_what_a_crash_left_of_a_finished_re_drop(tmp_path: Path) -> None:
    # A re-drop's result is in sent/ and its row REDROP; a crash before its working copy and state file were
    # removed left both behind. The next start removes them (its bytes are safe in sent/).
    company = _company(tmp_path)
    clock = SystemClock()
    store, files, ledger = await _ledger(tmp_path, company, clock)
    async with store:
        work = files.new_work_path("AGAIN.xml")
        work.write_bytes(invoice("REDROP/1"))
        row = await store.invoices.add("acme", "AGAIN.xml", "r", 1, work_path=str(work))
        ledger.show(row)
        await store.invoices.transition(row.id, S.CLAIMED, S.REDROP, result_name="AGAIN")
        intake = Intake(company, ledger, files, clock, settle_seconds=0, rescan_interval_seconds=1,
                        heavy=asyncio.Semaphore(1), log=LOG)
        await intake.adopt_orphans()
        await intake.clear_stale_states()
        assert not work.exists() and _state(company, "AGAIN") is None


async def test_a_finished_invoice_removes_only_its_own_state_file_whatever_its_size(tmp_path: Path) -> None:
    """clear_state reads the file with os.read (issue #16): one of more than a read's worth (a long error) is
    still recognised; another invoice's file under the same name and a file that is no JSON stay."""
    company = _company(tmp_path)
    store, files, ledger = await _ledger(tmp_path, company, ManualClock(dt.datetime(2026, 12, 6, tzinfo=dt.UTC)))
    async with store:
        rows = [await store.invoices.add("acme", f"FV-{n}.xml", f"hash{n}", 10) for n in range(3)]
        for row in rows:
            files.write_state(row, "queued", "waiting", {"lastError": {"details": ["x" * 40_000]}})
        assert (company.folders.outbox / "FV-0.state.json").stat().st_size > 40_000
        files.clear_state(rows[0])
        assert _state(company, "FV-0") is None
        files.clear_state(dataclasses.replace(rows[2], file_name="FV-1.xml"))     # same name, another invoice
        assert _state(company, "FV-1")["invoiceId"] == rows[1].id
        (company.folders.outbox / "FV-2.state.json").write_bytes(b"{not json")
        files.clear_state(rows[2])
        assert (company.folders.outbox / "FV-2.state.json").exists()
    await ledger.finish([])


async def test_show_many_stops_writing_state_files_once_told(tmp_path: Path) -> None:
    """A batch's late SUBMITTING state files are written beside the wait for its results and stopped when the
    results come (batch.BatchRunner._wait): the rest keep their older state, none is written after."""
    company = _company(tmp_path)
    store, _, ledger = await _ledger(tmp_path, company, ManualClock(dt.datetime(2026, 12, 6, tzinfo=dt.UTC)))
    async with store:
        rows = [await store.invoices.add("acme", f"FV-{n}.xml", f"hash{n}", 10) for n in range(2)]
        stop = threading.Event()
        await ledger.show_many(rows[:1], stop=stop)
        stop.set()
        await ledger.show_many(rows[1:], stop=stop)
        assert _state(company, "FV-0")["state"] == "claimed" and _state(company, "FV-1") is None
