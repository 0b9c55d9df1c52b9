"""KSeF's request rate limits (PROTOCOL.md §7, §14.3, §14.5): sliding 1 s / 1 min / 1 h windows per
(context, client IP, group); a breach answers 429 with `Retry-After` and a body naming the group.

* The group of an operation is read from openapi.json: the last column of its 429 description
  ("| 10 | 20 | 60 | batchSession"); operations limited only to 60 req/s ("| 60 | - | - | -") are
  public and counted per IP in the group `anonymous` (§7: challenge, auth steps, public keys, ...).
* Profiles (`ksefd sim --limits`, SimConfig.limits_profile): `production` and `test` both apply the PRD
  numbers (CHG 2.5.0: TEST defaults equal PRD); `off` reports -1 ("no limit", §14.5) everywhere.
* The `global` group (§14.5, §15) is a per-IP limit across every context and operation: -1 unless
  SimConfig.global_limit sets it; once positive, every limited request also counts in the key
  ("*", client IP, "global"), checked before the request's own group.
* Per-context overrides live in store table `rate_limit_overrides` keyed by the context value
  (limits.py: POST /testdata/rate-limits with the 13 groups of ApiRateLimitsOverride, or the
  production profile); DELETE restores the profile's numbers.
* Blocks are dynamic (§7 "grows with repeated breaches"): the first breach blocks until the window
  frees a slot; each further breach within an hour doubles the block, and a request sent during a
  block extends it (capped at one hour). Pre-signed URLs and /sim controls are outside /v2: never limited.
* Every request that arrives while its (context, IP, group) is blocked is counted, with the 429s and the
  longest Retry-After given, for tests: `GET /sim/ratelimits` (control.py; issue #10: "no request is ever
  sent into a known block").
All times come from the simulator's clock, so tests move a ManualClock instead of sleeping.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import spec
from .errors import ApiError, TooManyRequests
from .security import client_ip
from .spec import API_PREFIX
from .world import WORLD, World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Limits = dict[str, dict[str, int]]

OVERRIDES = "rate_limit_overrides"
ANONYMOUS = "anonymous"
GLOBAL = "global"
MAX_BLOCK_S = 3600.0
STRIKE_MEMORY_S = 3600.0
# (field, window seconds, Polish unit for the 429 text as in openapi.json's example)
WINDOWS = (("perHour", 3600.0, "godzinę"), ("perMinute", 60.0, "minutę"), ("perSecond", 1.0, "sekundę"))


def _v(per_second: int, per_minute: int, per_hour: int) -> dict[str, int]:
    return {"perSecond": per_second, "perMinute": per_minute, "perHour": per_hour}


# openapi.json GET /rate-limits example = PRD (A:limity/limity-api.md of 14.09.2026, CHG 2.7.1, 2.8.0).
PRODUCTION: Limits = {
    "onlineSession": _v(10, 30, 120), "onlineSessionClose": _v(20, 60, 240),
    "batchSession": _v(10, 20, 60), "batchSessionClose": _v(20, 40, 120),
    "invoiceSend": _v(10, 30, 180), "invoiceStatus": _v(30, 120, 1200),
    "sessionList": _v(5, 10, 60), "sessionInvoiceList": _v(10, 20, 200), "sessionMisc": _v(10, 120, 1200),
    "invoiceMetadata": _v(8, 16, 20), "invoiceExport": _v(8, 16, 20), "invoiceExportStatus": _v(10, 60, 600),
    "invoiceDownload": _v(8, 16, 64), "collectiveIdentifier": _v(20, 120, 240), "other": _v(10, 30, 120),
    ANONYMOUS: _v(60, -1, -1), GLOBAL: _v(-1, -1, -1),
}
# openapi.json ApiRateLimitsOverride: the 13 groups POST /testdata/rate-limits may set (§14.5).
OVERRIDABLE = ("onlineSession", "batchSession", "invoiceSend", "invoiceStatus", "sessionList", "sessionInvoiceList",
               "sessionMisc", "invoiceMetadata", "invoiceExport", "invoiceExportStatus", "invoiceDownload",
               "collectiveIdentifier", "other")
PROFILES = ("production", "test", "off")


@functools.cache
def group_of(method: str, spec_path: str) -> str | None:
    """The rate-limit group of an operation, from its 429 description in openapi.json."""
    operation = spec.document()["paths"].get(spec_path, {}).get(method.lower())
    if not operation:
        return None
    text = operation.get("responses", {}).get("429", {}).get("description", "")
    rows = [line for line in text.splitlines() if line.strip().startswith("|") and re.search(r"\d", line)]
    if not rows:
        return None
    last = rows[-1].strip().strip("|").split("|")[-1].strip()
    return ANONYMOUS if last in ("", "-") else last


def profile_limits(profile: str) -> Limits:
    if profile not in PROFILES:
        raise ValueError(f"rate-limit profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    if profile == "off":
        return {group: _v(-1, -1, -1) for group in PRODUCTION}
    return {group: dict(values) for group, values in PRODUCTION.items()}


def effective_limits(world: World, context_value: str | None) -> Limits:
    """What GET /rate-limits reports and the middleware enforces for a context."""
    limits = profile_limits(world.config.limits_profile)
    if any(value >= 0 for value in world.config.global_limit):
        limits[GLOBAL] = _v(*world.config.global_limit)
    override = world.store.get(OVERRIDES, context_value) if context_value else None
    if override:
        limits.update({group: dict(values) for group, values in override["rateLimits"].items()})
    return limits


@dataclass
class _Bucket:
    hits: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    strikes: int = 0
    last_strike: float = -math.inf


@dataclass
class Tally:
    """What the limiter refused, for tests (GET /sim/ratelimits)."""

    during_block: dict[tuple[str, str, str], int] = field(default_factory=dict)
    refused: int = 0
    longest_retry_after: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requestsDuringBlock": sum(self.during_block.values()), "tooManyRequests": self.refused,
                "longestRetryAfter": self.longest_retry_after,
                "duringBlock": [{"context": c, "ip": ip, "group": g, "requests": n}
                                for (c, ip, g), n in sorted(self.during_block.items())]}


class RateLimiter:
    """Sliding windows per key; `admit` records an accepted request or says how long to wait."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self.tally = Tally()

    def admit(self, key: tuple[str, str, str], limits: dict[str, int], now: float) -> tuple[float, str] | None:
        refused = self._admit(key, limits, now)
        if refused is not None:
            self.tally.refused += 1
            self.tally.longest_retry_after = max(self.tally.longest_retry_after, float(math.ceil(refused[0])))
            if not refused[1]:
                self.tally.during_block[key] = self.tally.during_block.get(key, 0) + 1
        return refused

    def blocks(self, now: float) -> list[dict[str, Any]]:
        return [{"context": c, "ip": ip, "group": g, "seconds": round(b.blocked_until - now, 3)}
                for (c, ip, g), b in sorted(self._buckets.items()) if b.blocked_until > now]

    def _admit(self, key: tuple[str, str, str], limits: dict[str, int], now: float) -> tuple[float, str] | None:
        """None when the request may pass (it is counted), else (retry-after seconds, the violated window
        as text, or "" for a request sent while blocked)."""
        bucket = self._buckets.setdefault(key, _Bucket())
        if now < bucket.blocked_until:
            # Retrying inside a block is a further breach: the block grows (PROTOCOL.md §7, §13.7).
            remaining = bucket.blocked_until - now
            bucket.blocked_until = now + min(MAX_BLOCK_S, max(1.0, remaining) * 2)
            bucket.strikes, bucket.last_strike = bucket.strikes + 1, now
            return bucket.blocked_until - now, ""
        horizon = max((seconds for name, seconds, _ in WINDOWS if limits.get(name, -1) > 0), default=0.0)
        while bucket.hits and bucket.hits[0] <= now - horizon:
            bucket.hits.popleft()
        wait, violated = 0.0, ""
        for name, seconds, unit in WINDOWS:
            limit = limits.get(name, -1)
            if limit <= 0:
                continue
            inside = [t for t in bucket.hits if t > now - seconds] if seconds < horizon else list(bucket.hits)
            if len(inside) >= limit:
                frees_at = inside[-limit] + seconds
                if frees_at - now > wait:
                    wait, violated = frees_at - now, f"{limit} żądań na {unit}"
        if not violated:
            bucket.hits.append(now)
            return None
        bucket.strikes = bucket.strikes + 1 if now - bucket.last_strike < STRIKE_MEMORY_S else 1
        bucket.last_strike = now
        block = min(MAX_BLOCK_S, max(wait, 1.0) * 2 ** (bucket.strikes - 1))
        bucket.blocked_until = now + block
        return block, violated


def limiter(world: World) -> RateLimiter:
    found: RateLimiter | None = world.services.get("ratelimits")
    if found is None:
        found = world.services["ratelimits"] = RateLimiter()
    return found


def _context_of(world: World, request: web.Request) -> str | None:
    """The context value of a valid access token, or None (the handler then answers 401 itself)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        payload: dict[str, Any] = world.tokens.verify(token.strip(), "ContextToken")
    except ApiError:
        return None
    return str(payload.get("context-identifier-value") or "") or None


def _spec_path(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None or not resource.canonical.startswith(API_PREFIX + "/"):
        return None
    return resource.canonical[len(API_PREFIX):]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = _spec_path(request) if request.path.startswith(API_PREFIX + "/") else None
    group = group_of(request.method, path) if path else None
    if group is None:
        return await handler(request)
    world = request.app[WORLD]
    context = None if group == ANONYMOUS else _context_of(world, request)
    table = effective_limits(world, context)
    now, ip = world.clock.now().timestamp(), client_ip(request)
    refused = None
    if any(value > 0 for value in table[GLOBAL].values()):
        refused = limiter(world).admit(("*", ip, GLOBAL), table[GLOBAL], now)
        group = GLOBAL if refused is not None else group
    if refused is None:
        refused = limiter(world).admit((context or "-", ip, group), table[group], now)
    if refused is not None:
        seconds = max(1, math.ceil(refused[0]))
        what = (f"Przekroczono limit {refused[1]} dla grupy {group}." if refused[1] else
                f"Żądanie wysłane w trakcie blokady dla grupy {group} przedłużyło ją.")
        raise TooManyRequests(seconds, [f"{what} Spróbuj ponownie po {seconds} sekundach."])
    return await handler(request)
