"""Issue #6, done means: a failed write (disk full) does not advance the checkpoint.

Two ways to fill the disk: a real one, a tiny tmpfs mounted as the inbox (when this machine lets the test
mount one: root with CAP_SYS_ADMIN), and everywhere a folder whose writes fail with ENOSPC after a few
files, as a full disk answers. Either way: what was written is whole and recorded, nothing is half
written, the checkpoint stays, and once there is room again the rest arrives, each invoice once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.delivery import InboxFolder, ReceivedInvoice, Staged
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, inbox_files, open_store, send_batches, warsaw_day

COUNT = 60


class FillingDisk(InboxFolder):
    """An inbox whose disk is full after `room` invoices: the next write fails with ENOSPC."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    def stage(self, invoice: ReceivedInvoice) -> Staged:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.xml_path(invoice.ksef_number)))
        self.room -= 1
        return super().stage(invoice)


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'}); "
                    "the ENOSPC-folder variant covers the behaviour")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("disk", ["enospc-folder", "tmpfs"])
async def test_a_full_disk_keeps_the_checkpoint_and_loses_nothing(
        disk: str, sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, COUNT)
    clock.advance(60)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    inbox = tmp_path / "inbox"
    with contextlib.ExitStack() as stack:
        if disk == "tmpfs":
            stack.enter_context(tiny_tmpfs(inbox, "96k"))
        buyer = company(tmp_path, token, base_url=sim.base_url, extra=f'inbox = "{inbox}"',
                        receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}")
        folder = FillingDisk(inbox, room=25) if disk == "enospc-folder" else None
        store = await open_store(tmp_path / "state.sqlite3", clock)
        try:
            worker = InboxWorker(buyer, context, store, clock, folder=folder)
            start = clock.now()
            report = await worker.run_cycle()
            assert "No space left on device" in report.failures["Subject2"]
            checkpoint = await store.inbox.checkpoint("buyer", "Subject2")
            assert checkpoint is not None and checkpoint.next_from < start - dt.timedelta(hours=12)  # not moved
            on_disk = inbox_files(inbox)
            assert 0 < len(on_disk) < COUNT
            expected = {s.ksef_number: s.xml for s in sent}
            for number, data in on_disk.items():                      # whole files only, each with its metadata
                assert data == expected[number]
                assert (inbox / f"{number}.json").is_file()
            assert sorted(p.name for p in inbox.iterdir() if p.suffix == ".json") == \
                sorted(f"{n}.json" for n in on_disk)                 # no metadata without its invoice
            assert not [p for p in inbox.iterdir() if p.name.startswith(".")]     # no temp file left
            assert await store.inbox.delivered_among("buyer", expected) == set(on_disk)   # what is there counts
            # The ERP takes the invoices away, which makes room; the retry (after the backoff) brings the rest.
            taken = {p.stem: p.read_bytes() for p in inbox.glob("*.xml")}
            for path in list(inbox.iterdir()):
                path.unlink()
            if folder is not None:
                folder.room = COUNT
            else:                                                      # and the administrator grows the disk
                subprocess.run(["mount", "-o", "remount,size=4m", str(inbox)], check=True)  # noqa: ASYNC221
            assert (await worker.run_cycle()).packages == 0           # backing off: no retry storm
            clock.advance(worker.company.sending.retry_min_seconds + 1)
            report = await worker.run_cycle()
            assert not report.failures
            rest = inbox_files(inbox)
            assert not set(rest) & set(taken)                          # nothing delivered twice
            assert {**taken, **rest} == expected
            assert sha256_b64(next(iter(rest.values()))) in {sha256_b64(x) for x in expected.values()}
            checkpoint = await store.inbox.checkpoint("buyer", "Subject2")
            assert checkpoint is not None and checkpoint.next_from > start - dt.timedelta(minutes=1)
        finally:
            await store.close()
            await client.close()
