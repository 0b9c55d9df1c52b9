"""A new invoice's QUEUED state file is written only once it has waited ledger.SHOW_QUEUED_AFTER: a backlog taken
into a batch at once creates no state file per invoice that lives a second (issue #16). Still owed after a kill -9
(the next start owes them again) and written at a graceful stop; never written after a later move of its invoice,
even when the move comes while the file is being written."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from ksefd.clock import SystemClock
from ksefd.daemon.outbox import ledger as ledger_module
from ksefd.daemon.outbox.intake import Intake
from ksefd.daemon.outbox.showing import LateShow
from ksefd.store import InvoiceRow, InvoiceState
from tests.daemon.test_outbox_parts import LOG, _company, _ledger, _state

S = InvoiceState


async def _queued(store: Any, count: int) -> list[InvoiceRow]:
    rows = [await store.invoices.add("acme", f"FV-{n}.xml", f"h{n}", 10) for n in range(count)]
    return list(await store.invoices.transition_steps([r.id for r in rows], [S.CLAIMED, S.CHECKED, S.QUEUED]))


async def test_a_queued_state_file_waits_and_is_never_written_for_an_invoice_moved_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "SHOW_QUEUED_AFTER", 0.05)
    company = _company(tmp_path)
    store, _, ledger = await _ledger(tmp_path, company, SystemClock())
    async with store:
        rows = await _queued(store, 3)
        ledger.show_later(rows)
        assert [_state(company, f"FV-{n}") for n in range(3)] == [None] * 3      # nothing at once
        # FV-0 taken into a batch (no state file of its own yet), FV-1 finished, both before the delay
        await ledger.move_many([rows[0].id], S.QUEUED, S.SUBMITTING, state_files=False)
        await ledger.move_many([rows[1].id], S.QUEUED, S.SUBMITTING, state_files=False)
        await store.invoices.transition_steps([rows[1].id], [S.SUBMITTING, S.PROCESSING, S.ACCEPTED])
        await ledger.done([rows[1].id], S.ACCEPTED)
        await asyncio.sleep(0.3)
        await ledger.show_owed()
        assert _state(company, "FV-0") is None and _state(company, "FV-1") is None
        assert _state(company, "FV-2")["state"] == "queued"       # still waiting: the ERP sees it


async def test_a_graceful_stop_writes_what_is_owed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "SHOW_QUEUED_AFTER", 3600.0)
    company = _company(tmp_path)
    store, _, ledger = await _ledger(tmp_path, company, SystemClock())
    async with store:
        rows = await _queued(store, 2)
        ledger.show_later(rows)
        await ledger.show_owed()
        assert [_state(company, f"FV-{n}")["state"] for n in range(2)] == ["queued", "queued"]


async def test_a_move_during_the_late_write_waits_for_it_so_no_stale_file_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owed file of FV-0 is being written (held in the middle) when the invoice finishes: its end waits
    for that write and then removes the file. Checked and dropped before the write, the end would remove
    nothing and the late file would stay in the outbox for good."""
    monkeypatch.setattr(ledger_module, "SHOW_QUEUED_AFTER", 3600.0)
    company = _company(tmp_path)
    store, files, ledger = await _ledger(tmp_path, company, SystemClock())
    async with store:
        row = (await _queued(store, 1))[0]
        ledger.show_later([row])
        writing, release = threading.Event(), threading.Event()
        real = files.write_state

        def slow_write(*args: Any, **kwargs: Any) -> None:
            writing.set()
            release.wait(5)
            real(*args, **kwargs)

        monkeypatch.setattr(files, "write_state", slow_write)
        owed = asyncio.ensure_future(ledger.show_owed())
        assert await asyncio.to_thread(writing.wait, 5)
        await store.invoices.transition_steps([row.id], [S.QUEUED, S.SUBMITTING, S.PROCESSING, S.ACCEPTED])
        threading.Timer(0.1, release.set).start()     # the write ends while the invoice's end waits for it
        await ledger.done([row.id], S.ACCEPTED, known=[dataclasses.replace(row, state=S.ACCEPTED)])
        await owed
        assert _state(company, "FV-0") is None


async def test_after_a_kill_the_next_start_owes_the_queued_files_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued with their files still owed when the daemon was killed: the next start writes them."""
    monkeypatch.setattr(ledger_module, "SHOW_QUEUED_AFTER", 0.01)
    company = _company(tmp_path)
    clock = SystemClock()
    store, files, ledger = await _ledger(tmp_path, company, clock)
    async with store:
        await _queued(store, 2)         # as a kill -9 leaves them: QUEUED in SQLite, no state file
        intake = Intake(company, ledger, files, clock, settle_seconds=0, rescan_interval_seconds=3600,
                        heavy=asyncio.Semaphore(1), log=LOG)
        draining = asyncio.Event()
        running = asyncio.create_task(intake.run(draining))
        try:
            async with asyncio.timeout(5):
                while _state(company, "FV-1") is None:  # noqa: ASYNC110 (a file)
                    await asyncio.sleep(0.01)
        finally:
            draining.set()
            intake.poke.set()
            await running
        assert _state(company, "FV-0")["state"] == _state(company, "FV-1")["state"] == "queued"
        assert dt.datetime.fromisoformat(_state(company, "FV-0")["updatedAt"])


async def test_a_late_show_writes_after_its_delay_and_nothing_once_stopped(tmp_path: Path) -> None:
    """showing.LateShow (a closed batch's SUBMITTING files): written once its delay has passed, counted from its
    start (the close), not from the wait for the batch's turn; nothing written once stopped; `show_all` at once."""
    company = _company(tmp_path)
    store, _, ledger = await _ledger(tmp_path, company, SystemClock())
    async with store:
        rows = await _queued(store, 3)
        moved = await ledger.move_many([r.id for r in rows], S.QUEUED, S.SUBMITTING, state_files=False)
        stopped = LateShow(ledger, moved[:1], {"sessionReferenceNumber": "REF"}, 0.05)
        await stopped.stop()
        shown = LateShow(ledger, moved[1:2], {"sessionReferenceNumber": "REF"}, 0.05)
        at_once = LateShow(ledger, moved[2:], {}, 3600.0)
        await at_once.show_all()
        assert _state(company, "FV-2")["state"] == "submitting" and _state(company, "FV-1") is None
        await asyncio.wait({shown.task})
        await shown.stop()
        await asyncio.sleep(0.1)
        assert _state(company, "FV-1")["sessionReferenceNumber"] == "REF" and _state(company, "FV-0") is None
