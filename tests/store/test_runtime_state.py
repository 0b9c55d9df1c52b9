"""Rate-limit snapshots (key/value), company holds, heartbeat and standalone audit events."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from ksefd.clock import ManualClock
from ksefd.store import RATE_LIMITS, Store


async def test_rate_limit_snapshot_survives_a_restart(db_path: Path, clock: ManualClock) -> None:
    snapshot = json.dumps({"version": 1, "requests": [{"context": "5265877635", "group": "invoiceSend",
                                                       "at": [1.5, 2.5]}], "blocks": {"5265877635": 99.0}})
    async with await Store.open(db_path, clock) as store:
        await store.kv.put(RATE_LIMITS, "snapshot", "old")
        await store.kv.put(RATE_LIMITS, "snapshot", snapshot)
        await store.kv.put("other", "x", "1")
    async with await Store.open(db_path, clock) as store:
        assert await store.kv.get(RATE_LIMITS, "snapshot") == snapshot
        assert await store.kv.items(RATE_LIMITS) == {"snapshot": snapshot}
        assert await store.kv.delete("other", "x") is True
        assert await store.kv.delete("other", "x") is False
        assert await store.kv.get("other", "x") is None


async def test_holds(store: Store, clock: ManualClock) -> None:
    first = await store.holds.hold("acme", "credentials-expired", "Renew the KSeF token in acme.token",
                                   clock.now() + dt.timedelta(minutes=15))
    clock.advance(900)
    second = await store.holds.hold("acme", "credentials-expired", "Still expired", None)
    assert second.since == first.since and second.reason == "Still expired" and second.next_retry_at is None
    assert [h.company for h in await store.holds.all()] == ["acme"]
    assert await store.holds.release("acme") is True
    assert await store.holds.release("acme") is False
    assert await store.holds.get("acme") is None
    assert [e.to_state for e in await store.events.recent("acme")] == ["released", "held", "held"]


async def test_heartbeat(store: Store, clock: ManualClock) -> None:
    await store.heartbeat.beat("daemon", {"companies": 2})
    clock.advance(10)
    await store.heartbeat.beat("daemon", {"companies": 3})
    await store.heartbeat.beat("inbox")
    beats = await store.heartbeat.read()
    assert [(b.component, b.at, b.detail) for b in beats] == [("daemon", clock.now(), {"companies": 3}),
                                                             ("inbox", clock.now(), None)]
    assert beats[0].pid == os.getpid()


async def test_standalone_events(store: Store, clock: ManualClock) -> None:
    await store.events.add(at=clock.now(), kind="offline", company="acme", detail={"mode": "offline24"})
    recent = await store.events.recent()
    assert recent[0].kind == "offline" and recent[0].detail == {"mode": "offline24"}
