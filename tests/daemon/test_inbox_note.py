"""Issue #16 goal 2: the staging note of a delivery (delivery.py step 4) is cleared once per delivery, not once
per chunk, and a kill after a chunk is placed (its note left behind) still writes nothing twice and loses nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.delivery import Deliverer, InboxFolder, ReceivedInvoice, Staged, StagingBook, recover
from ksefd.ksef.crypto import sha256_b64
from tests.daemon.inbox_support import inbox_files, open_store

COUNT, CHUNK = 35, 10


def invoices() -> list[ReceivedInvoice]:
    made = []
    for i in range(COUNT):
        number = f"5265877635-20260101-{i:012X}-{i % 100:02d}"
        xml = f"<Faktura n='{i}'/>".encode()
        made.append(ReceivedInvoice(number, xml, {"ksefNumber": number, "invoiceHash": sha256_b64(xml)}))
    return made


class CountingBook(StagingBook):
    clears = 0

    async def clear(self, subject_type: str) -> None:
        self.clears += 1
        await super().clear(subject_type)


class Killed(BaseException):
    """Stands for kill -9."""


class KilledAfterSecondChunk(InboxFolder):
    placed = 0

    def place_many(self, staged: Iterable[Staged]) -> None:    # type: ignore[override]
        InboxFolder.place_many(staged)
        self.placed += 1
        if self.placed == 2:
            raise Killed


async def test_the_note_is_cleared_once_per_delivery(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        book = CountingBook(store.kv, "buyer")
        folder = InboxFolder(tmp_path / "inbox")
        report = await Deliverer("buyer", "Subject2", folder, store.inbox, book, chunk=CHUNK).deliver(invoices())
        assert len(report.delivered) == COUNT and book.clears == 1          # 4 chunks, one clear
        assert await book.pending() == {}
        assert inbox_files(folder.root) == {i.ksef_number: i.xml for i in invoices()}
    finally:
        await store.close()


async def test_a_kill_after_a_placed_chunk_writes_nothing_twice(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        folder = KilledAfterSecondChunk(tmp_path / "inbox")
        book = StagingBook(store.kv, "buyer")
        with pytest.raises(Killed):
            await Deliverer("buyer", "Subject2", folder, store.inbox, book, chunk=CHUNK).deliver(invoices())
        taken = inbox_files(folder.root)                    # the ERP takes what it sees before the restart
        assert len(taken) == 2 * CHUNK
        for path in folder.root.iterdir():
            if not path.name.startswith("."):
                path.unlink()
        assert await recover(book, store.inbox) == CHUNK   # the second chunk's note, its files already placed
        assert inbox_files(folder.root) == {}               # nothing placed again
        folder = InboxFolder(tmp_path / "inbox")
        folder.prepare()
        report = await Deliverer("buyer", "Subject2", folder, store.inbox, book, chunk=CHUNK).deliver(invoices())
        again = inbox_files(folder.root)
        assert len(report.delivered) == COUNT - 2 * CHUNK and not set(again) & set(taken)
        assert {**taken, **again} == {i.ksef_number: i.xml for i in invoices()}
        assert await book.pending() == {}
    finally:
        await store.close()


async def test_a_chunk_whose_renames_failed_is_placed_before_the_next_delivery(tmp_path: Path) -> None:
    """A rename that fails after the chunk was noted and recorded (here a folder holds one invoice's name; an
    operator making the inbox read-only would do the same): the next delivery in the same run must not replace
    that note, or the chunk's temps would be removed as garbage at the next start and never delivered."""
    clock = ManualClock(dt.datetime.now(dt.UTC))
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        folder = InboxFolder(tmp_path / "inbox")
        folder.prepare()
        book = StagingBook(store.kv, "buyer")
        first, later = invoices()[:2 * CHUNK], invoices()[2 * CHUNK:]
        blocker = folder.xml_path(first[CHUNK + 3].ksef_number)
        blocker.mkdir()                                        # the rename into this name fails
        with pytest.raises(OSError):
            await Deliverer("buyer", "Subject2", folder, store.inbox, book, chunk=CHUNK).deliver(first)
        blocker.rmdir()                                        # the operator clears it; the daemon goes on
        await Deliverer("buyer", "Subject2", folder, store.inbox, book, chunk=CHUNK).deliver(later)
        await recover(book, store.inbox)                       # a restart: what is noted is finished,
        folder.prepare()                                       # unnoted temps are removed as garbage
        assert inbox_files(folder.root) == {i.ksef_number: i.xml for i in invoices()}
        assert await book.pending() == {}
    finally:
        await store.close()
