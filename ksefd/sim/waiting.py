"""Waiting for a moment on the simulator's clock, which tests move by hand (ManualClock)."""

from __future__ import annotations

import asyncio
import datetime as dt

from .world import World

POLL_S = 0.05


async def until(world: World, moment: dt.datetime) -> None:
    """Return once the simulator's clock reaches `moment`. Polling on purpose: an injectable clock cannot
    signal an event when a test moves it."""
    while (remaining := (moment - world.clock.now()).total_seconds()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(min(POLL_S, remaining))
