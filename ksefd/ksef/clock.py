"""Time for the client: an injectable clock (tests share a ManualClock with the simulator) and sleep.

The client reads `now()` to decide when tokens and sessions expire (PROTOCOL.md §3.5, §4.1); it never
hard-codes lifetimes. Anything with a `now() -> aware datetime` method fits, e.g. `ksefd.sim.clock.ManualClock`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Protocol

Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


async def real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def aware(when: dt.datetime) -> dt.datetime:
    """KSeF always sends an offset; a naive value is read as UTC rather than crashing a comparison."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
