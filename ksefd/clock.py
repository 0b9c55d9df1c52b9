"""Time for the daemon: an injectable clock (tests move a ManualClock instead of sleeping), the
Europe/Warsaw calendar day KSeF reasons in, and Polish business days for offline deadlines.

Any object with `now() -> aware datetime` fits where only the time is read, so one ManualClock can
drive the daemon and the simulator in a test. The daemon also needs `sleep()` from its clock, so a
ManualClock's sleepers wake when the test advances the clock past their deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Container
from typing import Protocol
from zoneinfo import ZoneInfo

WARSAW = ZoneInfo("Europe/Warsaw")
_POLISH_HOLIDAYS: Container[dt.date] | None = None   # made at the first lookup (issue #16: holidays costs ~10 MB)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to. `sleep()` returns once `advance`/`set` passes its deadline."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime.now(dt.UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start.astimezone(dt.UTC)
        self._sleepers: list[tuple[dt.datetime, asyncio.Future[None]]] = []

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self.set(self._now + dt.timedelta(seconds=seconds))

    def set(self, when: dt.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("ManualClock.set needs a timezone-aware time")
        self._now = when.astimezone(dt.UTC)
        for deadline, future in self._sleepers:
            if deadline <= self._now and not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting in `sleep()` (a test waits for this before advancing)."""
        return sum(1 for _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self._now + dt.timedelta(seconds=seconds), asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)


# --- the Polish calendar --------------------------------------------------------------------------

def warsaw_date(when: dt.datetime) -> dt.date:
    """The calendar day in Poland of an aware instant (KSeF compares days in Polish time, PROTOCOL.md §8.3)."""
    if when.tzinfo is None:
        raise ValueError("warsaw_date needs a timezone-aware time")
    return when.astimezone(WARSAW).date()


def warsaw_today(clock: Clock) -> dt.date:
    return warsaw_date(clock.now())


def end_of_day(day: dt.date) -> dt.datetime:
    """The first instant after `day` ends in Poland, in UTC: a deadline "by day D" is `now < end_of_day(D)`."""
    following = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=WARSAW)
    return following.astimezone(dt.UTC)


def is_business_day(day: dt.date) -> bool:
    """Monday to Friday and not a Polish public holiday (Saturdays count as days off, as in tax law)."""
    global _POLISH_HOLIDAYS
    if day.weekday() >= 5:
        return False
    if _POLISH_HOLIDAYS is None:
        import holidays  # only offline deadlines ask; an idle daemon never does

        _POLISH_HOLIDAYS = holidays.country_holidays("PL")   # years are filled in lazily on lookup
    return day not in _POLISH_HOLIDAYS


def next_business_day(day: dt.date) -> dt.date:
    """The first business day strictly after `day`."""
    return add_business_days(day, 1)


def add_business_days(day: dt.date, count: int) -> dt.date:
    """The `count`-th business day after `day` (count >= 1); `day` itself is never counted."""
    if count < 1:
        raise ValueError("count must be at least 1")
    current = day
    while count:
        current += dt.timedelta(days=1)
        if is_business_day(current):
            count -= 1
    return current


# --- offline deadlines (PROTOCOL.md §8.1) -----------------------------------------------------------

def offline24_deadline(issue_date: dt.date) -> dt.datetime:
    """offline24: send by the end of the next business day after the issue date (P_1)."""
    return end_of_day(next_business_day(issue_date))


def unavailability_deadline(ended_at: dt.datetime) -> dt.datetime:
    """KSeF unavailability (offline): by the end of the next business day after it ends."""
    return end_of_day(next_business_day(warsaw_date(ended_at)))


def failure_deadline(ended_at: dt.datetime) -> dt.datetime:
    """KSeF failure (awaria): within 7 business days after it ends; a new announcement restarts the count."""
    return end_of_day(add_business_days(warsaw_date(ended_at), 7))
