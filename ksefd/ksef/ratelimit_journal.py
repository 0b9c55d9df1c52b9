"""The rate limiter's durable record: every grant and every 429 block is committed before the request it
allows is sent (issue #10 point 1), so a daemon killed with SIGKILL and restarted at once knows exactly
which windows it has filled and which blocks are running (PROTOCOL.md §7: a request sent into a block
makes KSeF lengthen it, up to an hour).

`LimiterJournal` is the small interface the client needs; `ksefd.store` implements it over SQLite
(DESIGN.md layers: `ksef/` knows nothing of SQLite). `GroupCommit` batches the writes: grants taken at
the same moment by many callers (several companies, several groups) go into one transaction, and every
caller waits until a transaction that contains its own grant has committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# (row id, context, group, granted at, answered at or None) of one request the limiter let through; times in
# wall-clock seconds.
GrantRow = tuple[int, str, str, float, float | None]


@dataclass(eq=False)
class Grant:
    """One request the limiter let through. `at` is when KSeF may have counted it, as late as we know: the
    grant, then the moment it was committed, then the moment its answer arrived (KSeF stamps a request on
    arrival, which is before its answer). `id` is the journal's row, once committed."""

    context: str
    group: str
    at: float
    id: int | None = None


class PreviousRun(Protocol):
    """How the previous run that used this journal ended."""

    @property
    def clean(self) -> bool:
        """It stopped cleanly (`LimiterJournal.stop_run`)."""
        ...

    @property
    def same_boot(self) -> bool | None:
        """The machine has not restarted since it ran (None: cannot tell on this platform)."""
        ...

    @property
    def boot_time(self) -> float | None:
        """When the machine's current boot began (wall-clock seconds), if known."""
        ...


class LimiterJournal(Protocol):
    """Where the limiter's grants, blocks and server-reported limits are kept across restarts."""

    async def start_run(self) -> PreviousRun | None:
        """Mark this run as started and not yet stopped cleanly; say how the previous run ended (None: none)."""
        ...

    async def grants_since(self, since: float) -> list[GrantRow]:
        ...

    async def blocks(self) -> dict[str, float]:
        """Context -> wall-clock end of its 429 block, for the blocks recorded."""
        ...

    async def limits(self) -> dict[str, str]:
        """Context -> the limits table last saved for it (`save_limits` text)."""
        ...

    async def record(self, grants: Sequence[tuple[str, str, float]], answers: Sequence[tuple[int, float]],
                     blocks: Mapping[str, float]) -> list[int]:
        """Commit new grants (context, group, at), answer times of earlier ones (row id, at) and blocks in one
        transaction; return the new grants' row ids, in order, only once it has committed."""
        ...

    async def save_limits(self, context: str, text: str) -> None:
        ...

    async def stop_run(self) -> None:
        """Mark this run as stopped cleanly."""
        ...


class GroupCommit:
    """Pending grants, answers and blocks, written by whichever waiter gets the write lock first.

    `queue_*` is synchronous (the limiter's in-memory state changes at once); `flush()` returns once a
    transaction holding everything queued before the call has committed. Callers queued while a write is
    running are served together by the next one, so N concurrent grants cost about two transactions,
    not N. Answer times ride along with the next write (they only make the record more precise; a missing
    one is presumed late, see RateLimiter.load). If the write fails, its rows go back to the queue for the
    next writer and the error is raised to the caller, whose request is then not sent."""

    def __init__(self, journal: LimiterJournal) -> None:
        self._journal = journal
        self._grants: list[Grant] = []
        self._answers: dict[int, float] = {}
        self._blocks: dict[str, float] = {}
        self._queued = 0
        self._written = 0
        self._lock = asyncio.Lock()
        self.transactions = 0           # for tests and benchmarks: how many commits the grants cost

    def queue_grant(self, grant: Grant) -> None:
        self._grants.append(grant)
        self._queued += 1

    def queue_answer(self, grant: Grant) -> None:
        if grant.id is not None:
            self._answers[grant.id] = grant.at
            self._queued += 1

    def queue_block(self, context: str, until: float) -> None:
        self._blocks[context] = max(until, self._blocks.get(context, 0.0))
        self._queued += 1

    async def flush(self) -> None:
        target = self._queued
        async with self._lock:
            if self._written >= target:
                return          # another waiter's transaction carried ours
            grants, answers, blocks, upto = self._grants, self._answers, self._blocks, self._queued
            self._grants, self._answers, self._blocks = [], {}, {}
            try:
                ids = await self._journal.record([(g.context, g.group, g.at) for g in grants],
                                                 list(answers.items()), blocks)
            except BaseException:
                self._grants[:0] = grants
                self._answers = {**answers, **self._answers}
                for context, until in blocks.items():
                    self._blocks[context] = max(until, self._blocks.get(context, 0.0))
                raise
            for grant, row in zip(grants, ids, strict=True):
                grant.id = row
            self._written = upto
            self.transactions += 1
