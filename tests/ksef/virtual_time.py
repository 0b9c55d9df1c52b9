"""Virtual time for client tests: `sleep` parks the caller, and `drive` moves the clock to the
earliest sleeper only once every runnable task has had its turn, so waits cost no real time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class VirtualClock:
    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.slept = 0.0   # total virtual seconds waited by all callers

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(seconds, 0.0), next(self._seq), future))
        self.slept += max(seconds, 0.0)
        await future

    async def _settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def drive(self, work: Awaitable[T], limit: float = 10 * 24 * 3600) -> T:
        """Run `work` to completion, advancing virtual time whenever everything is asleep."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        end = self.t + limit
        while not task.done():
            await self._settle()
            if task.done():
                break
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)        # cancelled sleepers
            if not self._sleepers:
                await asyncio.sleep(0.001)           # waiting on real I/O
                continue
            when, _, future = heapq.heappop(self._sleepers)
            if when > end:
                task.cancel()
                raise AssertionError(f"virtual time limit of {limit} s reached")
            self.t = max(self.t, when)
            future.set_result(None)
        return task.result()
