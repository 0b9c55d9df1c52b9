"""`ksefd reload` wakes the daemon through STATE_DB.reload (inotify) instead of the daemon reading the state
database every 2 s while idle (issue #16 point 4); the database's own writes do not wake it."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ksefd import i18n
from ksefd.daemon import reload
from ksefd.daemon.reload_nudge import nudge, open_nudge
from ksefd.store import Store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux only")


async def test_only_the_nudge_file_wakes_the_watch(tmp_path: Path) -> None:
    state_db = tmp_path / "state.sqlite3"
    async with await Store.open(state_db) as store:
        watch = open_nudge(state_db)
        assert watch is not None
        try:
            for n in range(20):                        # the daemon's own writes: the -wal file changes
                await store.kv.put("x", "y", str(n))
            (tmp_path / "other.txt").write_text("x")   # and another file is noticed by name only
            await asyncio.sleep(0.1)
            assert not watch.event.is_set()
            nudge(state_db, "now")
            await asyncio.wait_for(watch.event.wait(), 5)
        finally:
            watch.close()


async def test_an_idle_daemon_does_not_look_for_reload_requests_yet_answers_one_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reload, "RELOAD_LOOK_SECONDS", 0.02)     # the first look (a request left before start)
    with i18n.using("en"):
        await _idle_then_asked(tmp_path, monkeypatch)


async def _idle_then_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with await Store.open(tmp_path / "state.sqlite3") as store:
        reads: list[str] = []
        real_get = store.kv.get

        async def get(namespace: str, key: str) -> Any:
            reads.append(key)
            return await real_get(namespace, key)

        monkeypatch.setattr(store.kv, "get", get)
        runtime = SimpleNamespace(store=store, config=SimpleNamespace(companies=[], source=None),
                                  clock=SimpleNamespace(now=lambda: dt.datetime.now(dt.UTC)))
        daemon: Any = SimpleNamespace(runtime=runtime, workers=[], connections={})
        requested, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(reload.watch_reloads(daemon, requested, stop))
        try:
            await asyncio.sleep(0.5)                 # 25 looks at the old pace
            assert reads.count(reload.REQUEST_KEY) == 1, reads
            outcome = await asyncio.wait_for(reload.request_reload(
                store, dt.datetime.now(dt.UTC), daemon_running=True, wait_seconds=5, poll_seconds=0.02), 10)
            assert not outcome.ok and "not started from a config file" in outcome.message   # the daemon's answer
        finally:
            stop.set()
            await task
