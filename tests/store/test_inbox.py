"""Receiving state: checkpoints move only with what was delivered; KSeF numbers are delivered once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.store import Delivery, Store

HWM = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def delivery(n: int, subject: str = "Subject2") -> Delivery:
    return Delivery(ksef_number=f"5265877635-20260301-{n:012X}-00", subject_type=subject, sha256="h" * 44,
                    path=f"{n}.xml", permanent_storage_date=HWM - dt.timedelta(minutes=n))


async def test_checkpoint_and_deliveries_move_together(db_path: Path, clock: ManualClock) -> None:
    async with await Store.open(db_path, clock) as store:
        assert await store.inbox.checkpoint("acme", "Subject2") is None
        await store.inbox.mark_cycle("acme", "Subject2", clock.now())
        first = await store.inbox.checkpoint("acme", "Subject2")
        assert first is not None and first.next_from is None and first.last_cycle_at == clock.now()
        await store.inbox.advance("acme", "Subject2", HWM, [delivery(1), delivery(2)])
    async with await Store.open(db_path, clock) as store:
        point = await store.inbox.checkpoint("acme", "Subject2")
        assert point is not None and point.next_from == HWM and point.last_cycle_at == clock.now()
        assert await store.inbox.delivered_count("acme") == 2
        stored = await store.inbox.delivery("acme", delivery(1).ksef_number)
        assert stored is not None and stored.permanent_storage_date == delivery(1).permanent_storage_date
        assert stored.delivered_at == clock.now()


async def test_a_failed_record_does_not_advance_the_checkpoint(store: Store) -> None:
    await store.inbox.advance("acme", "Subject2", HWM, [delivery(1)])
    broken = Delivery(ksef_number="X", subject_type="Subject2", sha256=None, path="x.xml")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="NOT NULL"):
        await store.inbox.advance("acme", "Subject2", HWM + dt.timedelta(hours=1), [delivery(2), broken])
    point = await store.inbox.checkpoint("acme", "Subject2")
    assert point is not None and point.next_from == HWM
    assert await store.inbox.delivered_among("acme", [delivery(1).ksef_number, delivery(2).ksef_number]) == {
        delivery(1).ksef_number}


async def test_deduplication_by_ksef_number(store: Store, clock: ManualClock) -> None:
    numbers = [delivery(n).ksef_number for n in range(1200)]
    await store.inbox.record_delivered("acme", [delivery(n) for n in range(0, 1200, 2)])
    assert await store.inbox.delivered_among("acme", numbers) == set(numbers[::2])   # more than one chunk
    assert await store.inbox.delivered_among("beta", numbers) == set()               # per company
    clock.advance(60)
    again = Delivery(ksef_number=numbers[0], subject_type="Subject3", sha256="z" * 44, path="elsewhere.xml")
    await store.inbox.record_delivered("acme", [again])
    kept = await store.inbox.delivery("acme", numbers[0])
    assert kept is not None and kept.path == "0.xml" and kept.subject_type == "Subject2"   # first delivery wins
    assert await store.inbox.is_delivered("acme", numbers[0])
    assert not await store.inbox.is_delivered("acme", numbers[1])
    assert await store.inbox.delivered_count("acme", "Subject2") == 600


async def test_checkpoints_per_subject_type(store: Store, clock: ManualClock) -> None:
    await store.inbox.advance("acme", "Subject2", HWM)
    await store.inbox.advance("acme", "Subject1", HWM - dt.timedelta(days=1))
    await store.inbox.mark_reconciled("acme", "Subject2", clock.now())
    await store.inbox.advance("beta", "Subject2", HWM)
    points = await store.inbox.checkpoints("acme")
    assert [(p.subject_type, p.next_from) for p in points] == [("Subject1", HWM - dt.timedelta(days=1)),
                                                               ("Subject2", HWM)]
    assert points[1].last_reconcile_at == clock.now() and points[0].last_reconcile_at is None
    assert len(await store.inbox.checkpoints()) == 3
