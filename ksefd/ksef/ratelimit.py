"""Client-side rate limiter: KSeF's sliding windows, kept on our side so that we never earn a 429.

KSeF counts requests per (context, client IP) and per endpoint group in three sliding windows at once
(the last 1 s, 60 s and 60 min; PROTOCOL.md §7). Since 2.8 opening and closing a session are separate
groups (§14.3) and `GET /rate-limits` reports 17 groups (§14.5). A 429 block is dynamic and escalates,
so a client that trips it pays more each time; this limiter waits instead.

`RateLimiter` implements the transport's `RequestGate` protocol (`acquire` before a request,
`penalise` after a 429). Time is injected (`now` gives wall-clock seconds, `sleep` waits), so tests
drive it with a fake clock and never really sleep. Its state can be saved and restored through a
`LimiterStore`, so a daemon restarted within the hour does not spend the same budget twice.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .clock import Sleep
from .errors import ProtocolError

if TYPE_CHECKING:
    from .auth import AuthSession

log = structlog.get_logger("ksefd.ksef.ratelimit")

Now = Callable[[], float]

SECOND, MINUTE, HOUR = 1.0, 60.0, 3600.0
GLOBAL_GROUP = "global"
GLOBAL_CONTEXT = "*"          # `global` is per IP across every context (§14.5)
FALLBACK_GROUP = "other"      # "everything else that is protected" (§7)
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class GroupLimits:
    """Requests allowed per second, minute and hour; None means no limit (KSeF reports -1)."""

    per_second: int | None
    per_minute: int | None
    per_hour: int | None

    def windows(self) -> tuple[tuple[float, int], ...]:
        pairs = ((SECOND, self.per_second), (MINUTE, self.per_minute), (HOUR, self.per_hour))
        return tuple((length, limit) for length, limit in pairs if limit is not None)

    def to_json(self) -> list[int]:
        return [-1 if v is None else v for v in (self.per_second, self.per_minute, self.per_hour)]

    @classmethod
    def of(cls, per_second: int, per_minute: int, per_hour: int) -> GroupLimits:
        def none_if_unlimited(value: int) -> int | None:
            return None if value < 0 else value
        return cls(none_if_unlimited(per_second), none_if_unlimited(per_minute), none_if_unlimited(per_hour))


# PRD defaults, which DEMO mirrors and TEST equals since 2.5.0 (PROTOCOL.md §7, close groups §14.3,
# anonymous/global/collectiveIdentifier §14.5). Used until `GET /rate-limits` says otherwise.
PRODUCTION_LIMITS: Mapping[str, GroupLimits] = {
    "onlineSession": GroupLimits.of(10, 30, 120),
    "onlineSessionClose": GroupLimits.of(20, 60, 240),
    "batchSession": GroupLimits.of(10, 20, 60),
    "batchSessionClose": GroupLimits.of(20, 40, 120),
    "invoiceSend": GroupLimits.of(10, 30, 180),
    "invoiceStatus": GroupLimits.of(30, 120, 1200),
    "sessionList": GroupLimits.of(5, 10, 60),
    "sessionInvoiceList": GroupLimits.of(10, 20, 200),
    "sessionMisc": GroupLimits.of(10, 120, 1200),
    "invoiceMetadata": GroupLimits.of(8, 16, 20),
    "invoiceExport": GroupLimits.of(8, 16, 20),
    "invoiceExportStatus": GroupLimits.of(10, 60, 600),
    "invoiceDownload": GroupLimits.of(8, 16, 64),
    "other": GroupLimits.of(10, 30, 120),
    "collectiveIdentifier": GroupLimits.of(20, 120, 240),
    "anonymous": GroupLimits.of(60, -1, -1),
    "global": GroupLimits.of(-1, -1, -1),
}


def parse_rate_limits(body: Mapping[str, Any]) -> dict[str, GroupLimits]:
    """Read an `EffectiveApiRateLimits` body (GET /rate-limits) leniently (§14.7 point 5): groups we
    do not know are ignored, a malformed entry keeps the default, and -1 means "no limit"."""
    parsed: dict[str, GroupLimits] = {}
    for group, default in PRODUCTION_LIMITS.items():
        entry = body.get(group)
        if not isinstance(entry, Mapping):
            parsed[group] = default
            continue
        values = [entry.get(name) for name in ("perSecond", "perMinute", "perHour")]
        numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(numbers) == 3:
            parsed[group] = GroupLimits.of(*numbers)
        else:
            log.warning("ratelimit.malformed_group", group=group, entry=str(entry)[:200])
            parsed[group] = default
    return parsed


@dataclass
class LimiterSnapshot:
    """Everything needed to resume without re-tripping the limits; JSON-serialisable.

    `requests` maps (context, group) to the wall-clock times of the requests granted within the
    last hour, `blocks` maps a context to the time its 429 block ends, `limits` keeps the limits
    each context was told by `GET /rate-limits`."""

    saved_at: float
    requests: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    blocks: dict[str, float] = field(default_factory=dict)
    limits: dict[str, dict[str, GroupLimits]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "version": SNAPSHOT_VERSION,
            "savedAt": self.saved_at,
            "requests": [{"context": c, "group": g, "at": stamps} for (c, g), stamps in self.requests.items()],
            "blocks": self.blocks,
            "limits": {ctx: {g: v.to_json() for g, v in table.items()} for ctx, table in self.limits.items()},
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LimiterSnapshot:
        raw = json.loads(text)
        if raw.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"rate-limiter snapshot version {raw.get('version')!r} is not {SNAPSHOT_VERSION}")
        return cls(
            saved_at=float(raw["savedAt"]),
            requests={(r["context"], r["group"]): [float(t) for t in r["at"]] for r in raw["requests"]},
            blocks={str(c): float(t) for c, t in raw["blocks"].items()},
            limits={ctx: {g: GroupLimits.of(*v) for g, v in table.items()} for ctx, table in raw["limits"].items()},
        )


async def adopt_server_limits(limiter: RateLimiter, auth: AuthSession) -> dict[str, GroupLimits]:
    """GET /rate-limits in `auth`'s context and adopt the answer (§7: the effective values; on TEST they can
    differ from PRD). Call it once per context after authenticating; the request itself is in group `other`."""
    response = await auth.request("GET", "/rate-limits", expect=(200,))
    body = response.json()
    if not isinstance(body, Mapping):
        raise ProtocolError("GET /rate-limits answered with something other than a JSON object")
    return limiter.apply_rate_limits_body(auth.context.key, body)


class LimiterStore(Protocol):
    """Where the daemon keeps the limiter's state (SQLite in ksefd.store); the client never knows."""

    async def load(self) -> LimiterSnapshot | None: ...

    async def save(self, snapshot: LimiterSnapshot) -> None: ...


class _Bucket:
    """Grant times of one (context, group), ascending, pruned to the longest window."""

    __slots__ = ("lock", "stamps")

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.lock = asyncio.Lock()    # FIFO: callers of one group are served in arrival order

    def record(self, at: float) -> None:
        if not self.stamps or at >= self.stamps[-1]:
            self.stamps.append(at)
        else:   # the wall clock stepped back; keep the list sorted
            bisect.insort(self.stamps, at)

    def prune(self, now: float, keep: float) -> None:
        cut = bisect.bisect_right(self.stamps, now - keep)
        if cut:
            del self.stamps[:cut]

    def wait(self, now: float, windows: tuple[tuple[float, int], ...], margin: float) -> float:
        """Seconds until one more request fits in every window (each widened by `margin`)."""
        longest = 0.0
        for length, limit in windows:
            span = length + margin
            if limit <= 0:
                return HOUR        # a zero limit: nothing may pass; look again later
            in_window = len(self.stamps) - bisect.bisect_right(self.stamps, now - span)
            if in_window >= limit:
                # The request `limit` places from the newest must leave the window first.
                oldest_that_must_leave = self.stamps[len(self.stamps) - limit]
                longest = max(longest, oldest_that_must_leave + span - now)
        return longest


class RateLimiter:
    """Sliding-window limiter per (context, group); implements the transport's `RequestGate`.

    `context` is whatever identifies KSeF's counting key on our side (the context identifier, e.g.
    a NIP; "" for unauthenticated calls, which KSeF counts per IP). `margin` widens every window a
    little, because KSeF stamps a request when it arrives and network latency varies."""

    def __init__(self, limits: Mapping[str, GroupLimits] | None = None, *, now: Now = time.time,
                 sleep: Sleep = asyncio.sleep, margin: float = 0.25, store: LimiterStore | None = None) -> None:
        self._defaults: dict[str, GroupLimits] = dict(limits or PRODUCTION_LIMITS)
        self._per_context: dict[str, dict[str, GroupLimits]] = {}
        self._now = now
        self._sleep = sleep
        self._margin = margin
        self._store = store
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._blocks: dict[str, float] = {}
        self._dirty = False

    # -- limits ---------------------------------------------------------------------------------

    def set_limits(self, context: str, limits: Mapping[str, GroupLimits]) -> None:
        """Adopt the limits `GET /rate-limits` reported for `context` (they differ per context on
        TEST, where they can be changed). The `global` group applies across all contexts."""
        self._per_context[context] = dict(limits)
        if GLOBAL_GROUP in limits:
            self._defaults[GLOBAL_GROUP] = limits[GLOBAL_GROUP]
        self._dirty = True

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

    # -- the RequestGate protocol ---------------------------------------------------------------

    async def acquire(self, context: str, group: str) -> None:
        """Wait until a request of `group` in `context` fits every window, then count it."""
        bucket = self._bucket(context, group)
        async with bucket.lock:
            while True:
                wait = self.delay(context, group)
                if wait <= 0:
                    self._grant(context, group)
                    return
                log.debug("ratelimit.wait", context=context, group=group, seconds=round(wait, 3))
                await self._sleep(wait)

    def penalise(self, context: str, group: str, retry_after: float) -> None:
        """KSeF answered 429: nobody in this context sends again before Retry-After has passed.

        The block is shared by every caller in the context, whatever their group, because KSeF's
        blocks escalate with each breach (§7) and a second 429 from a sibling would lengthen it."""
        until = self._now() + max(retry_after, 0.0)
        if until > self._blocks.get(context, 0.0):
            self._blocks[context] = until
            self._dirty = True
        log.warning("ratelimit.429", context=context, group=group, retry_after=retry_after)

    # -- inspection -----------------------------------------------------------------------------

    def delay(self, context: str, group: str) -> float:
        """Seconds an `acquire(context, group)` issued now would wait (0 if it would pass at once)."""
        now = self._now()
        wait = self._blocks.get(context, 0.0) - now
        bucket = self._bucket(context, group)
        bucket.prune(now, HOUR + self._margin)
        wait = max(wait, bucket.wait(now, self.limits_for(context, group).windows(), self._margin))
        global_windows = self._defaults[GLOBAL_GROUP].windows()
        if global_windows and group != GLOBAL_GROUP:
            wait = max(wait, self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP).wait(now, global_windows, self._margin))
        return wait if wait > 0 else 0.0

    def granted(self, context: str, group: str) -> list[float]:
        """Grant times still inside the hour window (for status pages and tests)."""
        return list(self._bucket(context, group).stamps)

    # -- persistence ----------------------------------------------------------------------------

    def snapshot(self) -> LimiterSnapshot:
        now = self._now()
        requests = {}
        unlimited_global = not self._defaults[GLOBAL_GROUP].windows()
        for key, bucket in self._buckets.items():
            bucket.prune(now, HOUR + self._margin)
            if unlimited_global and key == (GLOBAL_CONTEXT, GLOBAL_GROUP):
                continue   # kept in memory for the day `global` turns positive, not worth saving until then
            if bucket.stamps:
                requests[key] = list(bucket.stamps)
        blocks = {ctx: until for ctx, until in self._blocks.items() if until > now}
        return LimiterSnapshot(now, requests, blocks, {c: dict(t) for c, t in self._per_context.items()})

    def restore(self, snapshot: LimiterSnapshot) -> None:
        """Merge a saved state in: grants and blocks add to what we know, limits fill the gaps."""
        now = self._now()
        for (context, group), stamps in snapshot.requests.items():
            bucket = self._bucket(context, group)
            for at in stamps:
                if at > now - HOUR - self._margin:
                    bucket.record(at)
        for context, until in snapshot.blocks.items():
            if until > max(now, self._blocks.get(context, 0.0)):
                self._blocks[context] = until
        for context, table in snapshot.limits.items():
            self._per_context.setdefault(context, dict(table))
            restored_global = table.get(GLOBAL_GROUP)
            if restored_global is not None and restored_global.windows() and \
                    not self._defaults[GLOBAL_GROUP].windows():
                self._defaults[GLOBAL_GROUP] = restored_global   # per IP: not only for that context

    async def load(self) -> None:
        """Restore from the store, if there is one and it holds a state."""
        if self._store is None:
            return
        snapshot = await self._store.load()
        if snapshot is not None:
            self.restore(snapshot)
            log.info("ratelimit.restored", buckets=len(snapshot.requests), blocks=len(snapshot.blocks))

    async def save(self) -> None:
        if self._store is not None:
            self._dirty = False
            await self._store.save(self.snapshot())

    async def autosave(self, interval: float = 5.0) -> None:
        """Save every `interval` seconds when something changed; run it as a task, cancel to stop
        (a final `save()` on shutdown is the caller's job)."""
        while True:
            await self._sleep(interval)
            if self._dirty:
                await self.save()

    # -- internals ------------------------------------------------------------------------------

    def _bucket(self, context: str, group: str) -> _Bucket:
        key = (context, group)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def _grant(self, context: str, group: str) -> None:
        now = self._now()
        self._bucket(context, group).record(now)
        if group != GLOBAL_GROUP:
            # Recorded even while `global` is -1: when GET /rate-limits turns it positive (§15: 75/s in the
            # 2.9.0 example), the requests of the last hour already count, as they do on KSeF's side.
            every_request = self._bucket(GLOBAL_CONTEXT, GLOBAL_GROUP)
            every_request.record(now)
            every_request.prune(now, HOUR + self._margin)
        self._dirty = True
