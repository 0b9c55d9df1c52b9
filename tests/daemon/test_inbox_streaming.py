"""Issue #16 goal 2: export packages go through disk, and the checkpoint still moves only after their files.

* A package whose parts are each larger than every chunk of the stream (the HTTP body piece written to disk,
  the decryption chunk) and larger than a delivery chunk arrives intact: every invoice byte for byte, each
  once, with its _metadata.json spilled to disk beside the archive, and nothing of the package is left in
  the work folder afterwards.
* A crash after a package is downloaded and before its first file is written, and one after all its files are
  durable and recorded but before the checkpoint moves: the next run exports the same window again, writes
  nothing twice (even for the files the ERP already took away) and loses nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import ManualClock
from ksefd.daemon.inbox import delivery
from ksefd.daemon.inbox.delivery import InboxFolder, ReceivedInvoice, Staged
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef import export_package, transport
from ksefd.ksef.export import ExportOptions
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, inbox_files, open_store, send_batches, warsaw_day

QUICK = ExportOptions(poll_first=0.02, poll_max=0.1)


class Killed(BaseException):
    """Stands for kill -9: nothing in the daemon catches it, nothing after it runs."""


class CrashingInbox(InboxFolder):
    """An inbox whose process dies at `when`: "downloaded" (the first chunk of a package is about to be written)
    or "placed" (all `package` invoices of the first package are placed and recorded)."""

    def __init__(self, root: Path, when: str, package: int) -> None:
        super().__init__(root)
        self.when = when
        self.package = package
        self.placed = 0

    def stage_many(self, invoices: list[ReceivedInvoice]) -> list[Staged | OSError]:
        if self.when == "downloaded":
            raise Killed
        return super().stage_many(invoices)

    def place_many(self, staged: Iterable[Staged]) -> None:    # type: ignore[override]
        staged = list(staged)
        InboxFolder.place_many(staged)
        self.placed += len(staged)
        if self.when == "placed" and self.placed >= self.package:
            raise Killed


async def test_a_package_larger_than_every_chunk_arrives_intact(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_STREAM_CHUNK", 1024)         # 256 kB in production
    monkeypatch.setattr(export_package, "CHUNK", 4096)            # 1 MB in production
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", export_part_size=40_000), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 600)
    clock.advance(60)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    workdir = tmp_path / "work"
    try:
        worker = InboxWorker(buyer, context, store, clock, export_options=QUICK, workdir=workdir)
        downloads: list[int] = []
        exporter = worker.pipeline.exporter
        original = exporter.download

        async def download(*args: Any) -> Any:
            package = await original(*args)
            downloads.append(len(package.info.parts))
            assert package.archive.stat().st_size > 4 * 4096              # many decryption chunks
            assert sorted(p.name for p in workdir.iterdir()) == [            # encrypted parts gone
                package.archive.name, package.index.path.name]                 # _metadata.json spilled
            assert package.index.get(package.index.numbers[0]) is not None
            return package

        exporter.download = download                 # type: ignore[method-assign,assignment]
        report = await worker.run_cycle()
        assert not report.failures and downloads and downloads[0] > 1    # several parts of 40 kB, each > chunks
        assert len(sent) > delivery.CHUNK                                  # more than one delivery chunk
        assert sorted(report.delivered) == sorted(s.ksef_number for s in sent)          # each once
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}  # byte for byte
        assert list(workdir.iterdir()) == []
        assert not [p for p in buyer.folders.inbox.rglob("*") if p.name.startswith(".")]
    finally:
        await store.close()
        await client.close()


@pytest.mark.parametrize("when", ["downloaded", "placed"])
async def test_a_crash_between_download_and_checkpoint_writes_nothing_twice_and_loses_nothing(
        when: str, sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    cap = 100
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off", query_cap=cap), clock=clock)
    sent = {s.ksef_number: s.xml for s in await send_batches(http, sim.base_url, clock, tmp_path, 250)}
    clock.advance(60)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    buyer = company(tmp_path, token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    inbox = buyer.folders.inbox
    try:
        store = await open_store(tmp_path / "state.sqlite3", clock)
        try:
            worker = InboxWorker(buyer, context, store, clock, export_options=QUICK,
                                 folder=CrashingInbox(inbox, when, cap))
            with pytest.raises(Killed):
                await worker.run_cycle()
            checkpoint = await store.inbox.checkpoint("buyer", "Subject2")
            start = checkpoint.next_from if checkpoint else None
        finally:
            await store.close()
        taken = inbox_files(inbox)                  # the ERP takes what it sees before the restart
        assert len(taken) == (cap if when == "placed" else 0)
        for path in inbox.rglob("*.*"):
            if not path.name.startswith("."):
                path.unlink()

        store = await open_store(tmp_path / "state.sqlite3", clock)     # the restarted daemon
        try:
            checkpoint = await store.inbox.checkpoint("buyer", "Subject2")
            assert checkpoint is not None and checkpoint.next_from == start      # the crash did not move it
            worker = InboxWorker(buyer, context, store, clock, export_options=QUICK)
            report = await worker.run_cycle()
            assert not report.failures
            again = inbox_files(inbox)
            assert not set(again) & set(taken)                   # nothing the ERP took comes back
            assert {**taken, **again} == sent                    # nothing lost, byte for byte
            assert await store.inbox.delivered_count("buyer") == len(sent)
            assert await store.kv.items("inbox_staged") == {}
            assert not [p for p in inbox.rglob("*") if p.name.startswith(".")]
        finally:
            await store.close()
    finally:
        await client.close()
