"""Client-side rate limiter: KSeF's sliding windows, kept on our side so that we never earn a 429.

KSeF counts requests per (context, client IP) and per endpoint group in three sliding windows at once
(the last 1 s, 60 s and 60 min; PROTOCOL.md §7). Since 2.8 opening and closing a session are separate
groups (§14.3) and `GET /rate-limits` reports 17 groups (§14.5). A 429 block is dynamic and escalates,
and a request sent during a block lengthens it, so a client that trips it pays more each time; this
limiter waits instead.

`RateLimiter` implements the transport's `RequestGate` protocol (`acquire` before a request, `ready`
right before it is sent, `answered` once its answer or failure is in, `penalise` after a 429). Time is
injected (`now` gives wall-clock seconds, `sleep` waits), so tests drive it with a fake clock and never
really sleep.

Durability (issue #10 point 1): with a `LimiterJournal` (ksefd.store implements it over SQLite), every
grant and every block is committed before the request it allows is sent (ratelimit_journal.py), so a
daemon killed and restarted at once knows its windows and blocks (exactly, or with a few requests too many:
the spare rows a burst commits ahead, ratelimit_journal.py).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from .clock import Sleep
from .errors import ProtocolError
from .ratelimit_flight import InFlight
from .ratelimit_journal import SPARE_TTL_S, Grant, GrantRow, GroupCommit, LimiterJournal, PreviousRun
from .ratelimit_limits import HOUR, MINUTE, PRODUCTION_LIMITS, GroupLimits, parse_rate_limits
from .ratelimit_windows import SPARE_MOST, Bucket

if TYPE_CHECKING:
    from .auth import AuthSession

log = structlog.get_logger("ksefd.ksef.ratelimit")

Now = Callable[[], float]

GLOBAL_GROUP = "global"
GLOBAL_CONTEXT = "*"          # `global` is per IP across every context (§14.5)
FALLBACK_GROUP = "other"      # "everything else that is protected" (§7)
PER_IP_CONTEXT = ""           # unauthenticated calls (the transport's context ""): KSeF counts them per IP (§7)
PER_IP_IN_FLIGHT = 8          # of those, at most this many on the way at once (ratelimit_flight.py)
# ... and their windows are exact (issue #16 point 4: 1 000 logins are 4 000 public calls, 66.7 s at 60/s): a call
# still on the way counts in every window until its answer is in (`Bucket.open`; it may reach KSeF at any moment
# before that), and an answered call counts from its answer time, which is no earlier than KSeF's arrival stamp.
# A call sent 1 s after that stamp so reaches KSeF more than 1 s after the older one, whatever the latency. The
# margin is only for the clocks: KSeF's stamps may be as coarse as a Windows timer tick (15.6 ms), and ours may be
# slewed by NTP (at most 0.5 ms a second). 60 per 1.016 s instead of 60 per 1.05 s: 67.7 s for 4 000, not 70 s.
PER_IP_MARGIN = 0.016
# Spare rows (ratelimit_journal.py): a grant that finds none commits up to SPARE_MOST (ratelimit_windows.py) rows of
# its group at once, doubling from 1 while each reservation is used up within SPARE_RENEW_S of the last one; never
# more than the group's windows (and the global one) have room for now, so a kill -9 over-counts at most that many.
# Public calls (per IP) reserve SPARE_MOST at once, whatever their window holds (`_spares_wanted`, issue #16 point 4).
SPARE_RENEW_S = 1.0


async def adopt_server_limits(limiter: RateLimiter, auth: AuthSession) -> dict[str, GroupLimits]:
    """GET /rate-limits in `auth`'s context and adopt the answer (§7: the effective values; on TEST they can
    differ from PRD). Call it once per context after authenticating; the request itself is in group `other`."""
    response = await auth.request("GET", "/rate-limits", expect=(200,))
    body = response.json()
    if not isinstance(body, Mapping):
        raise ProtocolError("GET /rate-limits answered with something other than a JSON object")
    parsed = limiter.apply_rate_limits_body(auth.context.key, body)
    await limiter.save_limits(auth.context.key)
    return parsed


class RateLimiter:
    """Sliding-window limiter per (context, group); implements the transport's `RequestGate`.

    `context` is whatever identifies KSeF's counting key on our side (the context identifier, e.g.
    a NIP; "" for unauthenticated calls, which KSeF counts per IP). `margin` widens every window a
    little, because KSeF stamps a request when it arrives and network latency varies."""

    def __init__(self, limits: Mapping[str, GroupLimits] | None = None, *, now: Now = time.time,
                 sleep: Sleep = asyncio.sleep, margin: float = 0.25, journal: LimiterJournal | None = None) -> None:
        self._defaults: dict[str, GroupLimits] = dict(limits or PRODUCTION_LIMITS)
        self._per_context: dict[str, dict[str, GroupLimits]] = {}
        self._now = now
        self._sleep = sleep
        self._margin = margin
        self._journal = journal
        self._commit = GroupCommit(journal) if journal is not None else None
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._spare_sizes: dict[tuple[str, str], tuple[int, float]] = {}   # (size, when) of the last reservation
        self._blocks: dict[str, float] = {}
        self._asking: dict[tuple[str, str], int] = {}     # callers inside `acquire`, not yet granted (`held_back`)
        self._presumed_full_at: float | None = None
        self._flight = InFlight(PER_IP_IN_FLIGHT, blocked=lambda: not self.ready(PER_IP_CONTEXT, "anonymous"))

    # -- limits ---------------------------------------------------------------------------------

    def set_limits(self, context: str, limits: Mapping[str, GroupLimits]) -> None:
        """Adopt the limits `GET /rate-limits` reported for `context` (they differ per context on
        TEST, where they can be changed). The `global` group applies across all contexts."""
        self._per_context[context] = dict(limits)
        if GLOBAL_GROUP in limits:
            self._defaults[GLOBAL_GROUP] = limits[GLOBAL_GROUP]

    def apply_rate_limits_body(self, context: str, body: Mapping[str, Any]) -> dict[str, GroupLimits]:
        """Parse a `GET /rate-limits` answer and adopt it for `context`."""
        parsed = parse_rate_limits(body)
        self.set_limits(context, parsed)
        return parsed

    def limits_for(self, context: str, group: str) -> GroupLimits:
        table = self._per_context.get(context, self._defaults)
        if group == GLOBAL_GROUP:
            return self._defaults[GLOBAL_GROUP]
        return table.get(group) or table.get(FALLBACK_GROUP) or self._defaults[FALLBACK_GROUP]

    async def save_limits(self, context: str) -> None:
        """Keep `context`'s adopted limits for the next run (they apply before it asks KSeF again)."""
        table = self._per_context.get(context)
        if self._journal is not None and table is not None:
            await self._journal.save_limits(context, json.dumps({g: v.to_json() for g, v in table.items()}))

    # -- the RequestGate protocol ---------------------------------------------------------------

    async def acquire(self, context: str, group: str) -> Grant:
        """Wait until a request of `group` in `context` fits every window and no block runs, count it, and
        return once that count is durable (the request may then be sent). Call `answered` with the result
        when the request's answer or failure is in."""
        key = (context, group)
        self._asking[key] = self._asking.get(key, 0) + 1
        try:
            return await self._acquire(context, group)
        finally:
            self._asking[key] -= 1
            if not self._asking[key]:
                del self._asking[key]

    async def _acquire(self, context: str, group: str) -> Grant:
        while True:
            per_ip = context == PER_IP_CONTEXT
            if per_ip:        # a place among the public calls in flight (issue #16 point 4), given back by `answered`
                await self._flight.enter()
            grant: Grant | None = None
            try:
                bucket = self._bucket(context, group)
                async with bucket.lock:
                    while (wait := self.delay(context, group)) > 0:
                        log.debug("ratelimit.wait", context=context, group=group, seconds=round(wait, 3))
                        await self._sleep(wait)
                    grant = self._grant(context, group)
                if self._commit is not None and grant.id is None:     # a spare row is committed already
                    await self._commit.flush()
            except BaseException:
                if per_ip:
                    if grant is not None:       # never sent: it stays counted, but not as on the way
                        bucket.close(grant.at)
                    self._flight.leave()
                raise
            if self.ready(context, group):
                # KSeF stamps a request when it arrives; the commit took a moment, so count it from now (a later
                # stamp only frees its slot later).
                self._restamp(grant, self._now(), still_open=per_ip)
                return grant
            # A 429 arrived while this caller waited for the lock, a slot or the commit: the request must not
            # go into the block (it would lengthen it, §7). The grant stays counted; wait for the block's end.
            self.answered(grant)
            log.info("ratelimit.held_back_by_block", context=context, group=group,
                     seconds=round(self._block_end(context) - self._now(), 3))

    def answered(self, grant: Grant) -> None:
        """The request's answer (or failure) is in: KSeF counted it at the latest now. Its slot is counted from
        now, here and, with the journal's next write, after a restart."""
        if grant.context == PER_IP_CONTEXT:       # no longer on the way: counted from its answer from now on
            self._bucket(grant.context, grant.group).close(grant.at)
        self._restamp(grant, self._now())
        if self._commit is not None:
            self._commit.queue_answer(grant)
        if grant.context == PER_IP_CONTEXT:
            self._flight.leave()

    def ready(self, context: str, group: str) -> bool:
        """No known 429 block covers `context` now. The transport asks again right before sending, after any
        wait of its own (a fresh access token), so a block that began meanwhile holds the request back."""
        return self._block_end(context) <= self._now()

    async def penalise(self, context: str, group: str, retry_after: float) -> None:
        """KSeF answered 429: nobody in this context sends again before Retry-After has passed; returns once
        the block is durable, so a daemon restarted at once still honours it.

        The block is shared by every caller in the context, whatever their group, because KSeF's
        blocks escalate with each breach (§7) and a second 429 from a sibling would lengthen it. Other
        contexts (other companies) are not touched, except by a 429 in the per-IP `global` group (§14.5)."""
        key = GLOBAL_CONTEXT if group == GLOBAL_GROUP else context
        if key in (GLOBAL_CONTEXT, PER_IP_CONTEXT):    # a per-IP block: one public call at a time until one passes
            self._flight.penalised()
        until = self._now() + max(retry_after, 0.0)
        if until > self._blocks.get(key, 0.0):
            self._blocks[key] = until
            if self._commit is not None:
                self._commit.queue_block(key, until)
        log.warning("ratelimit.429", context=context, group=group, retry_after=retry_after)
        if self._commit is not None:
            await self._commit.flush()

    # -- inspection -----------------------------------------------------------------------------

    def delay(self, context: str, group: str) -> float:
        """Seconds an `acquire(context, group)` issued now would wait (0 if it would pass at once)."""
        now = self._now()
        wait = self._block_end(context) - now
        bucket = self._bucket(context, group)
        bucket.prune(now, HOUR + self._margin)
        margin = min(self._margin, PER_IP_MARGIN) if context == PER_IP_CONTEXT else self._margin
        wait = max(wait, bucket.wait(now, self.limits_for(context, group).windows(), margin))
        global_windows = self._defaults[GLOBAL_GROUP].windows()
        if global_windows and group != GLOBAL_GROUP:
            wait = max(wait, self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP).wait(now, global_windows, self._margin))
        return wait if wait > 0 else 0.0

    def held_back(self) -> dict[str, dict[str, tuple[int, float]]]:
        """Requests waiting now for room in KSeF's windows (or for a block's end), by context and group: how
        many, and when the next of them may go (`now` seconds). For `ksefd status`: an invoice in SUBMITTING
        whose send waits here is not in KSeF yet (issue #16)."""
        found: dict[str, dict[str, tuple[int, float]]] = {}
        now = self._now()
        for (context, group), count in list(self._asking.items()):
            if (wait := self.delay(context, group)) > 0:
                found.setdefault(context, {})[group] = (count, now + wait)
        return found

    def granted(self, context: str, group: str) -> list[float]:
        """Grant times still inside the hour window (for status pages and tests)."""
        return list(self._bucket(context, group).stamps)

    @property
    def transactions(self) -> int:
        """Commits the journal has made so far (grants taken together share one)."""
        return self._commit.transactions if self._commit is not None else 0

    # -- persistence ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Start a run on the journal: restore the grants of the last hour, the running blocks and the
        limits, and after an unclean stop presume the worst where the record may be incomplete."""
        if self._journal is None:
            return
        now = self._now()
        previous = await self._journal.start_run()
        grants, unanswered = await self._take_in(self._journal, now)
        if unanswered:
            await self._journal.record([], unanswered, {})
        if previous is not None and not previous.clean:
            self._after_unclean_stop(previous, now)
        log.info("ratelimit.restored", grants=len(grants), in_flight=len(unanswered),
                 blocks=sum(1 for u in self._blocks.values() if u > now),
                 clean_stop=previous.clean if previous is not None else None)

    async def observe(self, journal: LimiterJournal) -> None:
        """Take in what the daemon has recorded (grants, blocks, limits) without writing anything or starting a
        run: for a process beside it (`ksefd check`), which must not send into a block or a full window either.
        Requests in flight are counted from now, as after a restart."""
        await self._take_in(journal, self._now())

    async def _take_in(self, journal: LimiterJournal, now: float) -> tuple[list[GrantRow], list[tuple[int, float]]]:
        # A used spare row keeps its commit time until its answer is written: read that much further back.
        grants = await journal.grants_since(now - HOUR - self._margin - SPARE_TTL_S)
        unanswered: list[tuple[int, float]] = []
        for row, context, group, at, answered in grants:
            if answered is None:
                # Sent (its row committed first) but its answer never recorded: the run ended with it in flight,
                # or before its answer time was written. KSeF may have counted it as late as that run's end,
                # which is before now: presume now, and record that so the next start does not move it again.
                unanswered.append((row, now))
            stamp = now if answered is None else max(at, answered)
            self._bucket(context, group).record(stamp)
            self._count_globally(group, stamp)
        for context, until in (await journal.blocks()).items():
            if until > max(now, self._blocks.get(context, 0.0)):
                self._blocks[context] = until
        for context, text in (await journal.limits()).items():
            try:
                table = {g: GroupLimits.of(*v) for g, v in json.loads(text).items()}
            except (ValueError, TypeError):
                log.warning("ratelimit.saved_limits_unreadable", context=context)
                continue
            self._per_context.setdefault(context, table)
            restored_global = table.get(GLOBAL_GROUP)
            if restored_global is not None and restored_global.windows() and \
                    not self._defaults[GLOBAL_GROUP].windows():
                self._defaults[GLOBAL_GROUP] = restored_global   # per IP: not only for that context
        return grants, unanswered

    async def close(self) -> None:
        """A clean stop: everything queued (answer times too) is committed and the run is marked as ended
        cleanly."""
        if self._commit is not None and self._journal is not None:
            await self._commit.flush()          # spares being written land in the pool first...
            self._commit.release_spares()       # ...so that none is left behind
            await self._commit.flush()
            await self._journal.stop_run()

    def _after_unclean_stop(self, previous: PreviousRun, now: float) -> None:
        """The previous run did not stop cleanly. Which requests can it have sent without a surviving row?

        * Same boot (a kill -9, a crash, the OOM killer): none. Each request was sent only after its grant
          (or the spare row it took) had committed, and a committed SQLite transaction in WAL mode survives
          the death of the process even with synchronous=NORMAL; only the OS crashing or the power failing can
          undo it. So the record is complete (spares left unused count as requests: a few too many); only
          the requests in flight at the end are uncertain in time, and `load` already counts them from now.
          Nothing more is presumed: a crash loop does not slow the company down.
        * Another boot, or we cannot tell: the last commits may be lost (WAL with synchronous=NORMAL, though
          every synchronous=FULL commit of the daemon's invoice state syncs them too). The crash came before
          this boot began, so up to then presume the worst for the short windows: every (context, group)
          used its whole 1 s and 1 min allowance at the boot time (at `now` when the boot time is unknown).
          The hour window is not presumed full (that would stop every company for an hour after a power
          cut); the presumed requests do count in it.
        """
        if previous.same_boot:
            log.info("ratelimit.unclean_stop", presumed=False, reason="same boot: every committed grant survived")
            return
        at = now if previous.boot_time is None else min(now, previous.boot_time)
        self._presumed_full_at = at
        for (context, group), bucket in self._buckets.items():
            self._presume_full(context, group, bucket)
        log.warning("ratelimit.unclean_stop", presumed=True, short_windows_full_at=at,
                    reason="the machine restarted or cannot tell; the last grants may be lost")

    def _presume_full(self, context: str, group: str, bucket: Bucket) -> None:
        at = self._presumed_full_at
        if at is None or context == GLOBAL_CONTEXT or at <= self._now() - HOUR - self._margin:
            return
        short = [limit for length, limit in self.limits_for(context, group).windows() if length <= MINUTE]
        for _ in range(max(short, default=0)):
            bucket.record(at)

    # -- internals ------------------------------------------------------------------------------

    def _block_end(self, context: str) -> float:
        return max(self._blocks.get(context, 0.0), self._blocks.get(GLOBAL_CONTEXT, 0.0))

    def _bucket(self, context: str, group: str) -> Bucket:
        key = (context, group)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket()
            self._presume_full(context, group, bucket)
        return bucket

    def _uses_global(self, group: str) -> bool:
        # Every request counts in `global`, even while it is -1: when GET /rate-limits turns it positive (§15:
        # 75/s in the 2.9.0 example), the requests of the last hour already count, as they do on KSeF's side.
        return group != GLOBAL_GROUP

    def _count_globally(self, group: str, at: float) -> None:
        if self._uses_global(group):
            every_request = self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP)
            every_request.record(at)
            every_request.prune(self._now(), HOUR + self._margin)

    def _grant(self, context: str, group: str) -> Grant:
        grant = Grant(context, group, self._now())
        bucket = self._bucket(context, group)
        bucket.record(grant.at)
        if context == PER_IP_CONTEXT:
            bisect.insort(bucket.open, grant.at)
        self._count_globally(group, grant.at)
        if self._commit is not None and not self._commit.take_spare(grant, grant.at):
            self._commit.queue_grant(grant, self._spares_wanted(context, group, grant.at))
        return grant

    def _spares_wanted(self, context: str, group: str, now: float) -> int:
        """How many spare rows to commit with this grant (SPARE_MOST): none for a lone request, more while a
        burst uses them up, never more than fit in the windows beside this one."""
        assert self._commit is not None
        key = (context, group)
        if self._commit.reserving.get(key):
            return 0        # a reservation is being written; grants meanwhile share its commit
        size, last = self._spare_sizes.get(key, (1, float("-inf")))
        size = min(SPARE_MOST, size * 2) if now - last <= SPARE_RENEW_S else 1
        self._spare_sizes[key] = (size, now)
        if context == PER_IP_CONTEXT:
            # Neither doubled up from 1 nor capped by the room in the window now: public calls at the per-IP
            # limit keep their 1 s window full, so each would wait for a commit of its own, and at start-up
            # five small commits came first, each behind the start-up SQLite work of 1 000 companies (issue #16
            # point 4). Spares are used within SPARE_TTL_S or deleted (a lone refresh's 15 with the next write);
            # after a kill -9 the unused ones (at most SPARE_MOST) count as public calls made at the restart.
            size = room = SPARE_MOST
        else:
            room = self._bucket(context, group).room(now, self.limits_for(context, group).windows(), self._margin)
        if self._uses_global(group):
            room = min(room, self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP).room(
                now, self._defaults[GLOBAL_GROUP].windows(), self._margin))
        return max(0, min(size - 1, room))

    def _restamp(self, grant: Grant, new: float, *, still_open: bool = False) -> None:
        if new <= grant.at:
            return
        self._bucket(grant.context, grant.group).move(grant.at, new, still_open=still_open)
        if self._uses_global(grant.group):
            self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP).move(grant.at, new)
        grant.at = new
