"""ksefd.clock: Warsaw days, Polish business days, offline deadlines and the ManualClock."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from ksefd.clock import (
    WARSAW,
    ManualClock,
    SystemClock,
    add_business_days,
    end_of_day,
    failure_deadline,
    is_business_day,
    next_business_day,
    offline24_deadline,
    unavailability_deadline,
    warsaw_date,
    warsaw_today,
)

D = dt.date
UTC = dt.UTC


def test_warsaw_day_differs_from_utc_day_around_midnight() -> None:
    # 23:30 UTC on 14 Feb is 00:30 on 15 Feb in Warsaw (CET, +01:00); in summer the offset is +02:00.
    assert warsaw_date(dt.datetime(2026, 2, 14, 23, 30, tzinfo=UTC)) == D(2026, 2, 15)
    assert warsaw_date(dt.datetime(2026, 7, 14, 22, 30, tzinfo=UTC)) == D(2026, 7, 15)
    assert warsaw_date(dt.datetime(2026, 7, 14, 21, 59, tzinfo=UTC)) == D(2026, 7, 14)
    with pytest.raises(ValueError):
        warsaw_date(dt.datetime(2026, 7, 14))


def test_warsaw_today_reads_the_clock() -> None:
    clock = ManualClock(dt.datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert warsaw_today(clock) == D(2027, 1, 1)


def test_business_days() -> None:
    assert is_business_day(D(2026, 11, 20))          # Friday
    assert not is_business_day(D(2026, 11, 21))      # Saturday
    assert not is_business_day(D(2026, 11, 22))      # Sunday
    assert not is_business_day(D(2026, 11, 11))      # Independence Day, a Wednesday
    assert not is_business_day(D(2026, 12, 24))      # Christmas Eve, a public holiday since 2025
    assert not is_business_day(D(2026, 4, 6))        # Easter Monday
    assert not is_business_day(D(2026, 6, 4))        # Corpus Christi (moves with Easter)


def test_next_business_day() -> None:
    assert next_business_day(D(2026, 11, 19)) == D(2026, 11, 20)   # Thu -> Fri
    assert next_business_day(D(2026, 11, 20)) == D(2026, 11, 23)   # Fri -> Mon
    assert next_business_day(D(2026, 11, 10)) == D(2026, 11, 12)   # skips 11 Nov
    assert next_business_day(D(2026, 12, 23)) == D(2026, 12, 28)   # 24, 25, 26 Dec and a Sunday
    assert next_business_day(D(2026, 12, 31)) == D(2027, 1, 4)     # 1 Jan, then a weekend


def test_add_business_days() -> None:
    assert add_business_days(D(2026, 11, 20), 7) == D(2026, 12, 1)
    # 23, 28, 29, 30, 31 Dec, 4 Jan, 5 Jan; then 6 Jan (Epiphany) is skipped too
    assert add_business_days(D(2026, 12, 22), 7) == D(2027, 1, 5)
    assert add_business_days(D(2026, 12, 22), 8) == D(2027, 1, 7)
    with pytest.raises(ValueError):
        add_business_days(D(2026, 1, 1), 0)


def test_end_of_day_is_warsaw_midnight_in_utc() -> None:
    assert end_of_day(D(2026, 2, 16)) == dt.datetime(2026, 2, 16, 23, 0, tzinfo=UTC)
    assert end_of_day(D(2026, 7, 16)) == dt.datetime(2026, 7, 16, 22, 0, tzinfo=UTC)


def test_offline_deadlines() -> None:
    # offline24: P_1 on Friday 13 Feb 2026 -> by the end of Monday 16 Feb.
    assert offline24_deadline(D(2026, 2, 13)) == end_of_day(D(2026, 2, 16))
    # unavailability ending at 23:30 Warsaw on Friday 20 Nov -> by the end of Monday 23 Nov.
    ended = dt.datetime(2026, 11, 20, 23, 30, tzinfo=WARSAW)
    assert unavailability_deadline(ended) == end_of_day(D(2026, 11, 23))
    # the same instant in UTC is 22:30 on Friday: the Warsaw day decides
    assert unavailability_deadline(ended.astimezone(UTC)) == end_of_day(D(2026, 11, 23))
    # a failure ending on Friday 20 Nov -> 7 business days later is Tuesday 1 Dec.
    assert failure_deadline(ended) == end_of_day(D(2026, 12, 1))


async def test_manual_clock_sleep_wakes_on_advance() -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=UTC))
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("short", 10)), asyncio.create_task(sleeper("long", 60))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.advance(9)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert woke == ["short"]
    clock.set(dt.datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    await asyncio.gather(*tasks)
    assert woke == ["short", "long"]
    assert clock.sleepers == 0


async def test_manual_clock_sleep_can_be_cancelled() -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=UTC))
    task = asyncio.create_task(clock.sleep(30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    await clock.sleep(0)


def test_manual_clock_needs_aware_times() -> None:
    with pytest.raises(ValueError):
        ManualClock(dt.datetime(2026, 1, 1))
    clock = ManualClock(dt.datetime(2026, 1, 1, 1, tzinfo=WARSAW))
    assert clock.now() == dt.datetime(2026, 1, 1, 0, tzinfo=UTC) and clock.now().tzinfo is UTC


async def test_system_clock() -> None:
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0.01)
    assert clock.now() > before and before.tzinfo is not None
