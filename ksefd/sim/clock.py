"""Time for the simulator: one injectable clock so tests move time instead of sleeping."""

from __future__ import annotations

import datetime as dt
from typing import Protocol
from zoneinfo import ZoneInfo

WARSAW = ZoneInfo("Europe/Warsaw")


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that moves only when told to (tests) or that runs from a fixed offset."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)

    def set(self, when: dt.datetime) -> None:
        self._now = when


def iso(when: dt.datetime) -> str:
    """KSeF style: ISO-8601, 7 fractional digits, explicit offset (PROTOCOL.md §1)."""
    when = when.astimezone(dt.UTC)
    return (f"{when.year:04d}-{when.month:02d}-{when.day:02d}T{when.hour:02d}:{when.minute:02d}:{when.second:02d}."
            f"{when.microsecond:06d}0+00:00")


def parse_iso(text: str) -> dt.datetime:
    """Parse a date-time as KSeF accepts it; no offset means Europe/Warsaw (PROTOCOL.md §6.1)."""
    cleaned = text.strip().replace("Z", "+00:00")
    # Python's fromisoformat takes at most 6 fractional digits; KSeF emits 7.
    if "." in cleaned:
        head, rest = cleaned.split(".", 1)
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        cleaned = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    value = dt.datetime.fromisoformat(cleaned)
    if value.tzinfo is None:
        value = value.replace(tzinfo=WARSAW)
    return value.astimezone(dt.UTC)


def epoch_ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)
