"""A backlog's rows are in memory only while they are needed (issue #16 goal 2, the 10 000 backlog's peak RSS):
the dispatcher loads the rows of the pieces it starts, not of the whole backlog, and a piece's rows are let go
once it is uploaded (QUEUED rows) and once KSeF's processing ends (the SUBMITTING rows of its state files)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.daemon.outbox import pieces
from ksefd.daemon.outbox.batch import BatchRunner
from ksefd.store import InvoiceState
from ksefd.store.invoices import InvoiceRepo
from tests.daemon.support import drain, drop_many, invoice_rows, one_company, sim_records


async def test_the_dispatcher_loads_the_rows_of_the_pieces_it_starts_only(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 waiting in pieces of 10: no look loads more than a piece's rows (it loaded all 40, for the piece or
    two it could start)."""
    monkeypatch.setattr(pieces, "BATCH_PIECE", 10)
    loaded: list[int] = []
    real_due, real_still_in = InvoiceRepo.due, InvoiceRepo.still_in

    async def due(self: InvoiceRepo, company: str, states: Any, *args: Any, **kwargs: Any) -> Any:
        states = list(states)
        rows = await real_due(self, company, states, *args, **kwargs)
        if InvoiceState.QUEUED in states:
            loaded.append(len(rows))
        return rows

    async def still_in(self: InvoiceRepo, ids: Any, state: InvoiceState) -> Any:
        rows = await real_still_in(self, ids, state)
        loaded.append(len(rows))
        return rows

    monkeypatch.setattr(InvoiceRepo, "due", due)
    monkeypatch.setattr(InvoiceRepo, "still_in", still_in)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 40
    drop_many(outbox, "m", count, "MEM/ROWS")
    await drain(config)
    assert loaded and max(loaded) <= 10, loaded
    assert len(sim_records(sim)) == count
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}


async def test_a_pieces_rows_are_let_go_once_uploaded_and_once_processed(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The QUEUED rows a batch task was given are empty by the time its results are read, and the SUBMITTING
    rows kept for its late state files are empty once the session is tracked (both lists were held by the
    task's frames to its end: with a backlog's four pieces in flight, 20 000 rows)."""
    monkeypatch.setattr(pieces, "BATCH_PIECE", 10)
    given: dict[asyncio.Task[Any] | None, list[Any]] = {}
    at_results: list[int] = []
    after_tracking: list[int] = []
    real_send, real_track, real_close = BatchRunner.send, BatchRunner.track, BatchRunner.close_and_track

    async def send(self: BatchRunner, rows: list[Any], **kwargs: Any) -> Any:
        given[asyncio.current_task()] = rows
        return await real_send(self, rows, **kwargs)

    async def track(self: BatchRunner, session: Any, late: Any = None) -> Any:
        rows = given.get(asyncio.current_task())
        if rows is not None:
            at_results.append(len(rows))
        return await real_track(self, session, late)

    async def close_and_track(self: BatchRunner, session: Any, submitted: Any = None, **kwargs: Any) -> Any:
        result = await real_close(self, session, submitted, **kwargs)
        if submitted:
            after_tracking.append(len(submitted))
        elif submitted is not None:
            after_tracking.append(0)
        return result

    monkeypatch.setattr(BatchRunner, "send", send)
    monkeypatch.setattr(BatchRunner, "track", track)
    monkeypatch.setattr(BatchRunner, "close_and_track", close_and_track)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 30
    drop_many(outbox, "r", count, "MEM/HELD")
    await drain(config)
    assert at_results and set(at_results) == {0}, at_results
    assert after_tracking and set(after_tracking) == {0}, after_tracking
    assert len(sim_records(sim)) == count
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}
