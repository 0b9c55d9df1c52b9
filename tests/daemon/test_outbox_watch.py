"""One watcher for every outbox (issue #16 point 4): a drop into any company's outbox is noticed within a
second, whatever the number of companies (a watcher thread per company capped at 40 did not)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from ksefd.daemon.outbox.inotify import LOCAL_FILE_SYSTEMS, file_system_type, folder_is_local
from ksefd.daemon.outbox.watch import TRUSTED_RESCAN_SECONDS, OutboxWatcher

COMPANIES = 60


async def test_a_drop_into_any_of_sixty_outboxes_is_noticed_within_a_second(tmp_path: Path) -> None:
    watcher = OutboxWatcher()
    pokes: list[asyncio.Event] = []
    for n in range(COMPANIES):
        folder = tmp_path / f"company-{n:02d}" / "outbox"
        folder.mkdir(parents=True)
        pokes.append(asyncio.Event())
        watcher.register(folder, pokes[-1])
    stop = asyncio.Event()
    threads_before = threading.active_count()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await asyncio.sleep(0.3)                       # the watcher is up
        assert threading.active_count() - threads_before <= 2          # one watcher, not one per company
        for n in (59, 0, 41):
            (tmp_path / f"company-{n:02d}" / "outbox" / "FV.xml.tmp").write_bytes(b"<Faktura/>")
            (tmp_path / f"company-{n:02d}" / "outbox" / "FV.xml.tmp").rename(
                tmp_path / f"company-{n:02d}" / "outbox" / "FV.xml")
            await asyncio.wait_for(pokes[n].wait(), 1.0)
            assert [i for i, p in enumerate(pokes) if p.is_set()] == [n]
            pokes[n].clear()
        (tmp_path / "company-07" / "outbox" / ".hidden.tmp").write_bytes(b"x")   # not a candidate: no poke
        await asyncio.sleep(0.4)
        assert not any(p.is_set() for p in pokes)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")
async def test_on_linux_no_thread_watches_and_a_local_outbox_needs_only_a_rare_rescan(tmp_path: Path) -> None:
    """inotify read on the event loop: no thread at all (watchfiles woke one every 50 ms), and since the kernel
    reports every change on a local file system, intake's rescan there is only a safety net."""
    watcher = OutboxWatcher()
    outbox, offline = tmp_path / "outbox", tmp_path / "outbox" / "offline"
    outbox.mkdir()
    poke, offline_poke = asyncio.Event(), asyncio.Event()
    watcher.register(outbox, poke)
    watcher.register(offline, offline_poke, create=True)         # made by the watcher itself
    assert watcher.rescan_interval(outbox, 30.0) == 30.0          # not watched yet: the configured interval
    stop = asyncio.Event()
    threads = threading.active_count()
    task = asyncio.create_task(watcher.run(stop))
    try:
        for _ in range(100):
            if watcher.rescan_interval(outbox, 30.0) != 30.0:
                break
            await asyncio.sleep(0.01)
        assert watcher.rescan_interval(outbox, 30.0) == TRUSTED_RESCAN_SECONDS
        assert watcher.rescan_interval(outbox, 5000.0) == 5000.0
        assert threading.active_count() == threads
        (offline / "FV.xml").write_bytes(b"<Faktura/>")
        await asyncio.wait_for(offline_poke.wait(), 1.0)
        assert not poke.is_set()
        (tmp_path / "elsewhere.xml").write_bytes(b"<Faktura/>")
        (tmp_path / "elsewhere.xml").rename(outbox / "FV.xml")       # renamed in
        await asyncio.wait_for(poke.wait(), 1.0)
        poke.clear()
        offline_poke.clear()
        (offline / "FV.xml").unlink()
        offline.rmdir()                               # the folder went away: its rescan is the way again
        await asyncio.wait_for(offline_poke.wait(), 1.0)
        assert watcher.rescan_interval(offline, 30.0) == 30.0
        assert watcher.rescan_interval(outbox, 30.0) == TRUSTED_RESCAN_SECONDS
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert watcher.rescan_interval(outbox, 30.0) == 30.0           # stopped: nobody reports changes


def test_only_local_file_systems_are_trusted_to_report_every_change(tmp_path: Path) -> None:
    assert file_system_type(Path("/proc/self")) == "proc"
    assert not folder_is_local(Path("/proc/self"))
    if sys.platform == "linux" and file_system_type(tmp_path) in LOCAL_FILE_SYSTEMS:
        assert folder_is_local(tmp_path)
    assert "nfs" not in LOCAL_FILE_SYSTEMS and "cifs" not in LOCAL_FILE_SYSTEMS and "fuse" not in LOCAL_FILE_SYSTEMS
