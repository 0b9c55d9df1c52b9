"""Time for the client: an injectable clock, an injectable sleep, and the polling loop of KSeF's async statuses.

The client only *reads* time (`now()`) to decide when tokens and sessions expire (PROTOCOL.md §3.5, §4.1); it
never hard-codes lifetimes. Waiting goes through a separate `sleep` callable. So its `Clock` protocol is the
narrow one: the daemon's `ksefd.clock.Clock` (now + sleep) fits, and so does the simulator's ManualClock (now
only), which tests share between the simulator and the client. `SystemClock` is the shared helper's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from ksefd.clock import SystemClock as SystemClock

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware."""
        ...


async def real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def aware(when: dt.datetime) -> dt.datetime:
    """KSeF always sends an offset; a naive value is read as UTC rather than crashing a comparison."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def poll(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, sleep: Sleep, first: float,
               factor: float, maximum: float, budget: float, gave_up: Callable[[T, float], Exception]) -> T:
    """`fetch()` until `done(value)`, sleeping `first`, then `factor` times longer each time up to `maximum`
    seconds; once `budget` seconds of sleep did not suffice, raise `gave_up(last value, seconds waited)`.
    KSeF's async statuses (auth §3.4, sessions §4.4, exports §6.3) are polled this way."""
    delay, waited = first, 0.0
    while True:
        value = await fetch()
        if done(value):
            return value
        if waited >= budget:
            raise gave_up(value, waited)
        await sleep(delay)
        waited += delay
        delay = min(maximum, delay * factor)
