"""Availability per KSeF target (issue #11 item 1): Latarnia from the simulator over HTTP, its announcements
kept in SQLite, a refusing or unreachable Latarnia that is not an outage, and what the daemon sees itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.clock import ManualClock
from ksefd.daemon.availability import KsefAvailability, Verdict
from ksefd.daemon.failures import Failure
from ksefd.ksef.latarnia import default_url
from ksefd.store import Store


async def monitor(store: Store, url: str, clock: Any) -> KsefAvailability:
    found = KsefAvailability("test:sim", url, store, clock, interval=900, problem_interval=60)
    await found.load()
    return found


async def outage(http: aiohttp.ClientSession, sim: Any, start: dt.datetime, end: dt.datetime,
                 kind: str = "FAILURE") -> None:
    async with http.post(f"{sim.root_url}/sim/faults", json={"outages": [
            {"from": start.isoformat(), "to": end.isoformat(), "kind": kind}]}) as response:
        assert response.status == 200


async def test_failure_announced_and_ended_is_kept_in_sqlite(sim_factory: Any, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC))
    sim = await sim_factory(clock=clock)
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    try:
        watch = await monitor(store, default_url("test", sim.base_url), clock)
        changes: list[tuple[Verdict, Verdict]] = []
        watch.on_change(lambda before, after: changes.append((before, after)))
        await watch.poll_once()
        assert watch.view().state == "available" and watch.next_interval() == 900
        await outage(http, sim, clock.now() + dt.timedelta(minutes=1), clock.now() + dt.timedelta(hours=2))
        clock.advance(120)
        await watch.poll_once()
        verdict = watch.view()
        assert (verdict.state, verdict.announced, verdict.event_id) == ("failure", True, 1)
        assert watch.next_interval() == 60
        assert [a.type for a in await store.announcements.history(watch.latarnia_url)] == ["FAILURE_START"]
        clock.advance(2 * 3600)
        await watch.poll_once()
        assert watch.view().state == "available"
        history = await store.announcements.history(watch.latarnia_url)
        assert sorted(a.type for a in history) == ["FAILURE_END", "FAILURE_START"]
        assert [(b.state, a.state) for b, a in changes] == [("available", "failure"), ("failure", "available")]
        # A restart reads the history back.
        again = await monitor(store, watch.latarnia_url, clock)
        assert len(again.history) == 2
        await watch.close()
    finally:
        await store.close()


async def test_a_refusing_latarnia_is_not_an_outage_but_an_unreachable_ksef_is_offline24(
        sim: Any, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC))
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    try:
        watch = await monitor(store, f"{sim.root_url}/no-such-latarnia", clock)
        await watch.poll_once()
        assert watch.latarnia_error is not None and "404" in watch.latarnia_error
        assert watch.view().state == "available"
        watch.observe(Failure("transient", "rate-limited", "429"))
        assert watch.view().state == "available"          # KSeF answered
        watch.observe(Failure("transient", "ServerError", "HTTP 503 from KSeF"))
        verdict = watch.view()
        assert (verdict.state, verdict.announced) == ("unreachable", False)
        assert "offline24" in verdict.message and watch.poke.is_set()
        watch.observe(None)
        assert watch.view().state == "available"
        await watch.close()
    finally:
        await store.close()


async def test_poll_loop_waits_the_problem_interval_at_least(sim: Any, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC))
    store = await Store.open(tmp_path / "state.sqlite3", clock)
    try:
        watch = await monitor(store, default_url("test", sim.base_url), clock)
        polls: list[dt.datetime] = []
        original = watch.poll_once

        async def counted() -> None:
            polls.append(clock.now())
            await original()

        watch.poll_once = counted  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        for _ in range(200):
            if polls and clock.sleepers:
                break
            await asyncio.sleep(0.01)
        watch.observe(Failure("transient", "TransportError", "connection refused"))   # pokes
        clock.advance(30)
        await asyncio.sleep(0.05)
        assert len(polls) == 1                     # not before the problem interval
        clock.advance(30)
        for _ in range(200):
            if len(polls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(polls) == 2
        stop.set()
        clock.advance(1000)
        await asyncio.wait_for(task, 5)
        await watch.close()
    finally:
        await store.close()
