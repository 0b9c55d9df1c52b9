"""The rate limiter's durable record: every grant and every 429 block is committed before the request it
allows is sent (issue #10 point 1), so a daemon killed with SIGKILL and restarted at once knows exactly
which windows it has filled and which blocks are running (PROTOCOL.md §7: a request sent into a block
makes KSeF lengthen it, up to an hour).

`LimiterJournal` is the small interface the client needs; `ksefd.store` implements it over SQLite
(DESIGN.md layers: `ksef/` knows nothing of SQLite). `GroupCommit` batches the writes: grants taken at
the same moment by many callers (several companies, several groups) go into one transaction, and every
caller waits until a transaction that contains its own grant has committed.

Spare rows (issue #16 goal 5): a burst of one group's requests (an online trickle sends, asks and fetches
about 100 a second) cost a commit each. So a grant may commit a few more rows of its (context, group) than
it needs; the next requests of that group take one of those already durable rows and go without a commit.
What the record protects is that no request KSeF may have counted is missing from it after a kill -9; a
committed row whose request was never sent only counts one request too many (a spare left at a kill is read
as a request in flight and counted from the restart, RateLimiter.load), which can slow the next run a
little but never lets it exceed a limit. RateLimiter decides how many (never more than the windows have
room for, doubling only while the previous spares were used up at once; the public calls, counted per IP,
take SPARE_MOST at once); a spare not used within
SPARE_TTL_S, and every spare at a clean stop, is deleted again (`voids`), so only a kill over-counts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# (row id, context, group, granted at, answered at or None) of one request the limiter let through; times in
# wall-clock seconds.
GrantRow = tuple[int, str, str, float, float | None]
# A spare row is used within this many seconds of its commit or deleted. A used spare's row keeps the time of
# its commit until its answer is written, so a restart reads this much further back (RateLimiter._take_in).
SPARE_TTL_S = 2.0


@dataclass(eq=False)
class Grant:
    """One request the limiter let through. `at` is when KSeF may have counted it, as late as we know: the
    grant, then the moment it was committed, then the moment its answer arrived (KSeF stamps a request on
    arrival, which is before its answer). `id` is the journal's row, once committed."""

    context: str
    group: str
    at: float
    id: int | None = None
    spare: bool = False         # a row committed ahead for a later request of its group (module docstring)


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
                     blocks: Mapping[str, float], voids: Sequence[int] = ()) -> list[int]:
        """Commit new grants (context, group, at), answer times of earlier ones (row id, at), blocks, and the
        deletion of spare rows never used (`voids`) in one transaction; return the new grants' row ids, in
        order, only once it has committed."""
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
        self._voids: list[int] = []
        self._queued = 0
        self._written = 0
        self._lock = asyncio.Lock()
        self.transactions = 0           # for tests and benchmarks: how many commits the grants cost
        self._spares: dict[tuple[str, str], deque[Grant]] = {}      # committed, not yet used, oldest first
        self.reserving: dict[tuple[str, str], int] = {}             # spares queued or being written

    def queue_grant(self, grant: Grant, spares: int = 0) -> None:
        """Queue `grant`, and `spares` more rows of its (context, group) for later requests (`take_spare`)."""
        self._grants.append(grant)
        self._queued += 1
        if spares > 0:
            key = (grant.context, grant.group)
            self._grants.extend(Grant(grant.context, grant.group, grant.at, spare=True) for _ in range(spares))
            self.reserving[key] = self.reserving.get(key, 0) + spares

    def take_spare(self, grant: Grant, now: float) -> bool:
        """Give `grant` an already committed spare row of its group (True: it may be sent without a commit).
        Spares older than SPARE_TTL_S are deleted with the next write instead."""
        pool = self._spares.get((grant.context, grant.group))
        while pool:
            spare = pool.popleft()
            if now - spare.at <= SPARE_TTL_S and spare.id is not None:
                grant.id = spare.id
                return True
            if spare.id is not None:
                self._voids.append(spare.id)
        return False

    def release_spares(self) -> None:
        """Every unused spare deleted with the next write (a clean stop: the next run counts none of them)."""
        for pool in self._spares.values():
            self._voids.extend(s.id for s in pool if s.id is not None)
            pool.clear()
        if self._voids:
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
            voids = self._voids
            self._grants, self._answers, self._blocks, self._voids = [], {}, {}, []
            try:
                rows = [(g.context, g.group, g.at) for g in grants]
                ids = await (self._journal.record(rows, list(answers.items()), blocks, voids) if voids else
                             self._journal.record(rows, list(answers.items()), blocks))
            except BaseException:
                self._grants[:0] = grants
                self._answers = {**answers, **self._answers}
                self._voids[:0] = voids
                for context, until in blocks.items():
                    self._blocks[context] = max(until, self._blocks.get(context, 0.0))
                raise
            for grant, row in zip(grants, ids, strict=True):
                grant.id = row
                if grant.spare:
                    key = (grant.context, grant.group)
                    self._spares.setdefault(key, deque()).append(grant)
                    self.reserving[key] -= 1
            self._written = upto
            self.transactions += 1
