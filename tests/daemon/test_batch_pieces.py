"""A backlog goes in batch sessions of about BATCH_PIECE invoices, so KSeF processes one while ksefd prepares the
next (issue #16 goal 2); each invoice still in exactly one session, once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import spool
from ksefd.daemon.outbox import intake, pieces
from ksefd.daemon.outbox.pieces import batch_sizes, piece_size
from ksefd.store import InvoiceState
from tests.daemon.support import drain, drop_many, invoice_rows, one_company, sim_records


def test_piece_sizes() -> None:
    assert piece_size(10_000, 1_000) == 2_500                # one session: the whole drop fits a piece
    assert piece_size(10_000, 10_000) == 2_500               # four pieces
    assert piece_size(10_000, 20_000) == 5_000               # larger: still four sessions, not eight
    assert piece_size(10_000, 100_000) == 10_000             # never above KSeF's cap (PROTOCOL.md §5)
    assert piece_size(800, 10_000) == 800                    # nor above the configured one
    assert batch_sizes(2_600, 2_500) == [1_300, 1_300]       # even, not 2 500 and a session for 100
    assert batch_sizes(10_000, 2_500) == [2_500] * 4
    assert batch_sizes(5_001, 2_500) == [1_667, 1_667, 1_667]
    assert batch_sizes(2_600, 2_500, whole_only=True) == [2_500]    # the rest waits for what is still coming
    assert batch_sizes(0, 2_500) == [] and sum(batch_sizes(9_999, 2_500)) == 9_999


async def test_a_backlog_larger_than_a_piece_goes_in_several_sessions_each_invoice_once(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "BATCH_PIECE", 20)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 50
    drop_many(outbox, "p", count, "PIECE")
    await drain(config)
    records = sim_records(sim)
    assert len(records) == count and {r["sessionType"] for r in records} == {"Batch"}
    assert len({r["invoiceHash"] for r in records}) == count                  # each invoice once
    per_session = Counter(r["sessionReferenceNumber"] for r in records)
    assert len(per_session) >= 3 and max(per_session.values()) <= 20, per_session
    rows = await invoice_rows(config, "acme")
    assert len(rows) == count and {r.state for r in rows} == {InvoiceState.DONE}
    assert len({r.session_id for r in rows}) == len(per_session)
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(list(sent.glob("*.ksef.json"))) == count
    assert not list(outbox.glob("*.state.json"))


async def test_a_drop_still_landing_while_intake_looks_again_goes_by_batch(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ERP renames a large drop in: the first look sees only part of it. While the next look lists the folder
    (slow on a large one), the dispatcher must not send the part already queued online (30 a minute in
    production): the intake is busy from the moment it looks."""
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=20)
    outbox = config.companies[0].folders.outbox
    drop_many(outbox, "a", 10, "LANDING/A")
    real_scan = spool.scan
    looks: list[int] = []

    def scan(directory: Path, odd: list[tuple[Path, str]] | None = None) -> list[Path]:
        if directory != outbox:
            return real_scan(directory, odd)
        looks.append(1)
        if len(looks) == 2:
            time.sleep(1.0)          # a slow listing: the dispatcher runs meanwhile (and the login is done)
        found = real_scan(directory, odd)
        if len(looks) == 1:          # the rest of the drop lands just after the first look
            drop_many(outbox, "b", 15, "LANDING/B")
        return found

    monkeypatch.setattr(spool, "scan", scan)
    await drain(config)
    records = sim_records(sim)
    assert len(records) == 25 and {r["sessionType"] for r in records} == {"Batch"}, Counter(
        r["sessionType"] for r in records)


async def test_a_drop_that_landed_during_a_look_is_seen_whole_before_the_dispatcher_chooses(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest of a drop lands while the intake is looking (after its listing): the watcher has told the intake
    of it, but between that look and the next one the dispatcher must not take the part already queued for a
    trickle and send it online (30 a minute in production): the intake is busy until it has looked again."""
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=20)
    outbox = config.companies[0].folders.outbox
    drop_many(outbox, "a", 10, "TOLD/A")
    real_scan, real_identity = spool.scan, intake._identity
    looks: list[int] = []

    def scan(directory: Path, odd: list[tuple[Path, str]] | None = None) -> list[Path]:
        found = real_scan(directory, odd)
        if directory == outbox:
            looks.append(1)
            if len(looks) == 1:      # the rest lands just after the listing: the watcher sees it come
                drop_many(outbox, "b", 15, "TOLD/B")
        return found

    def identity(folder: Path) -> tuple[int, int] | None:
        if len(looks) == 1:
            time.sleep(1.0)          # a slow moment between the two looks: the dispatcher runs meanwhile
        return real_identity(folder)

    monkeypatch.setattr(spool, "scan", scan)
    monkeypatch.setattr(intake, "_identity", identity)
    await drain(config)
    records = sim_records(sim)
    assert len(records) == 25 and {r["sessionType"] for r in records} == {"Batch"}, Counter(
        r["sessionType"] for r in records)


async def test_the_next_piece_starts_when_a_batch_ends_while_the_other_is_still_running(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches at once: when the first ends, the third piece goes at once, not when the second ends too
    (the invoices of running batches were counted as waiting ones, which hid the next piece)."""
    from ksefd.daemon.outbox.batch import BatchRunner

    monkeypatch.setattr(pieces, "BATCH_PIECE", 10)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    drop_many(outbox, "q", 30, "PIECE/NEXT")
    real = BatchRunner.close_and_track
    sessions: list[int] = []
    third = asyncio.Event()
    held: list[bool] = []

    async def close_and_track(self: BatchRunner, session: Any, submitted: Any = None, **kwargs: Any) -> Any:
        if session.id not in sessions:
            sessions.append(session.id)
            if len(sessions) == 3:
                third.set()
            if len(sessions) == 2:       # KSeF is slow with the second batch: the third must not wait for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(third.wait(), 10)
                held.append(third.is_set())
        return await real(self, session, submitted, **kwargs)

    monkeypatch.setattr(BatchRunner, "close_and_track", close_and_track)
    await drain(config)
    assert held == [True]
    records = sim_records(sim)
    assert len(records) == 30 and len({r["invoiceHash"] for r in records}) == 30
    assert len(Counter(r["sessionReferenceNumber"] for r in records)) == 3


async def test_a_closed_batch_leaves_its_slot_to_the_next_piece_while_its_results_are_read(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batch slots: once a piece is closed KSeF works on it alone, so the third piece is built, uploaded and
    closed while the first two pieces' results are still being read (their slots used to last until the last
    UPO: KSeF sat idle meanwhile)."""
    from ksefd.daemon.outbox.batch import BatchRunner
    from ksefd.ksef import BatchSender

    monkeypatch.setattr(pieces, "BATCH_PIECE", 10)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    drop_many(outbox, "r", 30, "PIECE/SLOT")
    real_close, real_track = BatchSender.close, BatchRunner.track
    closes: list[str] = []
    third = asyncio.Event()
    held: list[bool] = []

    async def close(self: BatchSender, reference: str) -> None:
        await real_close(self, reference)
        closes.append(reference)
        if len(closes) == 3:
            third.set()

    async def track(self: BatchRunner, session: Any, show: Any = None) -> Any:
        if len(held) < 2:            # the first two pieces' results wait until a third piece is closed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(third.wait(), 10)
            held.append(third.is_set())
        return await real_track(self, session, show)

    monkeypatch.setattr(BatchSender, "close", close)
    monkeypatch.setattr(BatchRunner, "track", track)
    await drain(config)
    assert held == [True, True]
    records = sim_records(sim)
    assert len(records) == 30 and len({r["invoiceHash"] for r in records}) == 30
    rows = await invoice_rows(config, "acme")
    assert {r.state for r in rows} == {InvoiceState.DONE}

