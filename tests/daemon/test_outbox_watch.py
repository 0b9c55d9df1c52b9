"""One watcher for every outbox (issue #16 point 4): a drop into any company's outbox is noticed within a
second, whatever the number of companies (a watcher thread per company capped at 40 did not)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from ksefd.daemon.outbox.watch import OutboxWatcher

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
