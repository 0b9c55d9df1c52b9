"""The online trickle (issue #16). When the tracker asks KSeF about a sent online invoice (polling.py): first
when KSeF usually has its verdict, learned from KSeF's own dates, then less and less often; the tracker on its
own, with the simulator over HTTP, real SQLite and folders, and an injected clock for the daemon's side. And
how many online sends go at once (the daemon in drain mode)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from ksefd.clock import ManualClock, SystemClock
from ksefd.config import Config
from ksefd.daemon.connection import CompanyConnection
from ksefd.daemon.outbox.files import OutboxFiles
from ksefd.daemon.outbox.grouped import GroupedMove
from ksefd.daemon.outbox.ledger import Ledger
from ksefd.daemon.outbox.online import OnlineChannel
from ksefd.daemon.outbox.outcomes import Outcomes
from ksefd.daemon.outbox.polling import MAX_POLL, START, ProcessingTime, again
from ksefd.daemon.outbox.tracker import Tracker
from ksefd.daemon.outbox.worker import ONLINE_CONCURRENCY
from ksefd.daemon.runtime import Runtime
from ksefd.ksef import SessionInvoice
from ksefd.ksef.models import StatusInfo
from ksefd.ksef.ratelimit import RateLimiter
from ksefd.store import Change, InvoiceRow, InvoiceState, StateConflict, Store
from tests.daemon.support import SELLER, drain, drop, invoice, load, one_company, write_config

S = InvoiceState
LOG = structlog.get_logger("test")
STATUS = "GET /v2/sessions/{referenceNumber}/invoices/{invoiceReferenceNumber}"
T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)


def accepted(seconds: float) -> SessionInvoice:
    return SessionInvoice(ordinal_number=1, reference_number="R", invoice_hash="h", invoicing_date=T0,
                          status=StatusInfo(code=200, description="ok"),
                          acquisition_date=T0 + dt.timedelta(seconds=seconds))


def test_the_first_wait_follows_ksefs_own_processing_time() -> None:
    timing = ProcessingTime()
    assert timing.first()[0] == START
    for _ in range(30):
        timing.observe(accepted(2.0))            # KSeF took 2 s from acceptance to the KSeF number
    wait, step = timing.first()
    assert 1.9 < wait <= 2.0 and again(step) == wait / 4          # then a quarter, a half, the whole ...
    timing.observe(SessionInvoice(ordinal_number=2, reference_number="R2", invoice_hash="h", invoicing_date=T0,
                                  status=StatusInfo(code=450, description="bad")))   # a rejection: no dates
    assert timing.first()[0] == wait
    for _ in range(30):
        timing.observe(accepted(3600))
    assert timing.first()[0] <= MAX_POLL and again(MAX_POLL) == MAX_POLL


@dataclass
class _Online:
    """One company's online channel and tracker on a manual clock, against a real simulator."""
    clock: ManualClock
    store: Store
    ledger: Ledger
    channel: OnlineChannel
    tracker: Tracker
    files: OutboxFiles

    async def send(self, number: int, prefix: str) -> int:
        """A QUEUED invoice made from the sample, sent online; its id."""
        work = self.files.new_work_path(f"FV-{number}.xml")
        work.write_bytes(invoice(f"{prefix}/{number}"))
        row = await self.store.invoices.add("acme", f"FV-{number}.xml", f"h{number}", 1, work_path=str(work))
        row = await self.ledger.move(await self.ledger.move(row, S.CHECKED), S.QUEUED)
        assert await self.channel.send(row) is None
        return row.id


@contextlib.asynccontextmanager
async def _online(config: Config, tmp_path: Path) -> AsyncIterator[_Online]:
    company = config.companies[0]
    clock = ManualClock(dt.datetime.now(dt.UTC))
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    files = OutboxFiles(company, company.folders.outbox / ".ksefd")
    files.prepare()
    ledger = Ledger(company.name, store, files, clock.now, LOG)
    system = SystemClock()
    runtime = Runtime(config, store, system, RateLimiter(now=lambda: system.now().timestamp(), sleep=system.sleep))
    try:
        connection = CompanyConnection(runtime, company)
        assert await connection.ready() is None
        outcomes = Outcomes(company, ledger, files, connection, LOG)
        channel = OnlineChannel(company, ledger, outcomes, files, connection, LOG)
        tracker = Tracker(company.name, ledger, outcomes, channel, connection, LOG)
        yield _Online(clock, store, ledger, channel, tracker, files)
        await channel.close_current("test")
    finally:
        await runtime.close_clients()
        await store.close()


async def test_a_sent_invoice_is_first_asked_about_when_ksef_usually_has_its_verdict(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)

    async def status_requests() -> int:
        async with http.get(f"{sim.root_url}/sim/connections") as response:
            tally = await response.json()
        return int(tally["operations"].get(STATUS, {}).get("requests", 0))

    async with _online(config, tmp_path) as on:
        async def state(invoice_id: int) -> S:
            row = await on.store.invoices.get(invoice_id)
            assert row is not None
            return row.state

        first = await on.send(1, "POLL")
        assert await on.tracker.step() is None
        assert await status_requests() == 0 and await state(first) == S.PROCESSING    # not asked at once ...
        assert on.tracker.next_wake() == START                                       # ... but after the guess
        on.clock.advance(START)
        assert await on.tracker.step() is None
        assert await status_requests() == 1 and await state(first) == S.DONE
        learned = on.tracker.processing_time.estimate
        assert learned < START            # the simulator decides within milliseconds: the guess moves towards it

        second = await on.send(2, "POLL")
        assert await on.tracker.step() is None and await status_requests() == 1
        wait = on.tracker.next_wake()
        assert wait is not None and wait == pytest.approx(max(0.01, learned), abs=1e-5) and wait < START
        on.clock.advance(wait)
        assert await on.tracker.step() is None
        assert await status_requests() == 2 and await state(second) == S.DONE


async def test_up_to_ten_online_sends_go_at_once(sim_factory: Any, http: aiohttp.ClientSession,
                                                 tmp_path: Path) -> None:
    """A trickle is not sent one by one: as many sends at once as KSeF takes in a second (invoiceSend 10/s,
    PROTOCOL.md §7; the limiter keeps the rate), each sent once."""
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=100)
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "latency=0.05"}):
        pass                       # every answer takes a while, so sends overlap whenever the daemon lets them
    outbox = config.companies[0].folders.outbox
    for n in range(24):
        drop(outbox, f"FV-{n}.xml", invoice(f"TRICKLE/{n}"))
    await drain(config)
    async with http.get(f"{sim.root_url}/sim/connections") as response:
        sends = (await response.json())["operations"]["POST /v2/sessions/online/{referenceNumber}/invoices"]
    assert sends["requests"] == 24 and sends["maxInFlight"] == ONLINE_CONCURRENCY == 10, sends
    assert len(list(config.companies[0].folders.sent.glob("*.upo.xml"))) == 24


@contextlib.asynccontextmanager
async def _queued(tmp_path: Path, count: int) -> AsyncIterator[tuple[Store, Ledger, list[InvoiceRow]]]:
    """A state database with `count` QUEUED invoices of one company and its ledger (no KSeF needed)."""
    clock = ManualClock(T0)
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    async with store:
        (tmp_path / "acme.token").write_text("unused\n")
        company = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [
            {"name": "acme", "nip": SELLER, "token_file": "acme.token"}])).companies[0]
        ledger = Ledger("acme", store, OutboxFiles(company, tmp_path / "work"), clock.now, LOG)
        rows = []
        for n in range(count):
            row = await store.invoices.add("acme", f"FV-{n}.xml", f"h{n}", 1)
            rows.extend(await store.invoices.transition_steps([row.id], [S.CLAIMED, S.CHECKED, S.QUEUED]))
        yield store, ledger, rows


async def test_concurrent_sends_share_commits_and_a_conflict_fails_only_its_own(tmp_path: Path) -> None:
    """grouped.py: steps arriving while a commit runs go together in the next one; an invoice another task moved
    meanwhile fails alone."""
    async with _queued(tmp_path, 6) as (store, ledger, rows):
        ids = [r.id for r in rows]
        await store.invoices.transition(ids[3], S.QUEUED, S.HELD)        # moved by another task meanwhile
        group = GroupedMove(ledger, S.QUEUED, S.SUBMITTING)
        results = await asyncio.gather(*(group.move(Change(i, {"mode": "online", "attempts": 1}, {"n": i}))
                                         for i in ids), return_exceptions=True)
        assert isinstance(results[3], StateConflict)
        assert [r.state for n, r in enumerate(results) if n != 3] == [S.SUBMITTING] * 5     # type: ignore[union-attr]
        assert group.commits == 5              # the first alone, the others together: refused, then each alone
        states = {r.id: r.state for r in await store.invoices.get_many(ids)}
        assert [states[i] for i in ids] == [S.SUBMITTING] * 3 + [S.HELD] + [S.SUBMITTING] * 2
        ledger.track_due.clear()
        group = GroupedMove(ledger, S.SUBMITTING, S.PROCESSING)
        moved = await asyncio.gather(*(group.move(Change(i, {"invoice_ref": f"R{i}"})) for i in ids[:3]))
        assert [r.invoice_ref for r in moved] == [f"R{i}" for i in ids[:3]] and group.commits == 2
        assert ledger.track_due.is_set()


async def test_intents_and_answers_share_one_commit(tmp_path: Path) -> None:
    """grouped.py, issue #16 goal 5: one committer carries both online steps, so the answers of some sends and the
    intents of others arriving meanwhile go in ONE transaction (it was one each: two commits per round); rows
    given as `known` are not read back, and each comes back in its own new state."""
    async with _queued(tmp_path, 7) as (store, ledger, rows):
        sent = await store.invoices.transition_each([Change(r.id, {"mode": "online"}) for r in rows[:3]],
                                                     S.QUEUED, S.SUBMITTING)
        group = GroupedMove(ledger)
        first = group.move(Change(rows[6].id, {"attempts": 1}), step=(S.QUEUED, S.SUBMITTING), known=rows[6])
        moved = await asyncio.gather(first, *(
            group.move(Change(r.id, {"invoice_ref": f"R{r.id}"}), step=(S.SUBMITTING, S.PROCESSING), known=r)
            for r in sent), *(group.move(Change(r.id, {"attempts": 1}), step=(S.QUEUED, S.SUBMITTING), known=r)
                              for r in rows[3:6]))
        assert group.commits == 2          # the first alone, then three answers and three intents together
        assert [r.state for r in moved] == [S.SUBMITTING] + [S.PROCESSING] * 3 + [S.SUBMITTING] * 3
        assert [r.invoice_ref for r in moved[1:4]] == [f"R{r.id}" for r in sent]
        stored = {r.id: r for r in await store.invoices.get_many([r.id for r in rows])}
        assert [stored[r.id].state for r in moved] == [r.state for r in moved]
        assert [stored[r.id].attempts for r in moved] == [r.attempts for r in moved] == [1, 0, 0, 0, 1, 1, 1]
        with pytest.raises(ValueError):
            await group.move(Change(rows[0].id))           # no step given, none set for the group


async def test_answered_invoices_results_and_upos_are_placed_in_one_pass(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tracker.poll_processing, issue #16 goal 5: the UPOs fetched from the answers' links are written with the
    group's NAME.ksef.json and sent/ copies, in one placing of the files (it was two: the UPOs in a second pass,
    two more flushes and a thread hop per group), and the invoices are DONE with every result file."""
    from ksefd import spool_group
    _, _, config = await one_company(sim_factory, http, tmp_path)
    placed: list[int] = []
    real_place = spool_group.place

    def place(staged: Any) -> list[bool]:
        placed.append(len(staged))
        return real_place(staged)

    async with _online(config, tmp_path) as on:
        ids = [await on.send(number, "ONEPASS") for number in range(3)]
        assert on.channel.steps.commits == 6         # each send's intent and answer, through the one committer
        on.clock.advance(START)
        monkeypatch.setattr(spool_group, "place", place)
        assert await on.tracker.step() is None
        assert placed == [6]                 # 3 x (NAME.ksef.json + NAME.upo.xml), once
        assert [r.state for r in await on.store.invoices.get_many(ids)] == [S.DONE] * 3
        sent = config.companies[0].folders.sent
        assert len(list(sent.glob("FV-*.upo.xml"))) == len(list(sent.glob("FV-*.ksef.json"))) == 3
        assert len(await on.store.sessions.upos((await on.store.invoices.get_many(ids))[0].session_id or 0)) == 3
