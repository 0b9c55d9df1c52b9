"""The client-side limiter (issue #4 item 7): sliding windows per (context, group), shared 429 blocks.
Driven by virtual time: no test really sleeps. Its durable record: tests/store/test_rate_limit_journal.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from typing import Any

import aiohttp
import pytest

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import KsefToken
from ksefd.ksef.errors import RateLimited
from ksefd.ksef.ratelimit import (
    PRODUCTION_LIMITS,
    GroupLimits,
    RateLimiter,
    adopt_server_limits,
    parse_rate_limits,
)
from ksefd.ksef.ratelimit_journal import Grant
from ksefd.ksef.transport import RetryPolicy
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.ksef.virtual_time import VirtualClock
from tests.support.ksef_auth import create_ksef_token


def assert_windows_respected(stamps: list[float], limits: GroupLimits, what: str) -> None:
    """No half-open window (t - L, t] of any length L holds more than its limit."""
    stamps = sorted(stamps)
    for length, limit in limits.windows():
        for j in range(limit, len(stamps)):
            gap = stamps[j] - stamps[j - limit]
            assert gap >= length, f"{what}: {limit + 1} requests within {gap:.4f} s (window {length} s)"


def limiter_on(clock: VirtualClock, **kwargs: object) -> RateLimiter:
    return RateLimiter(now=clock.now, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def test_a_burst_is_spread_over_the_second_minute_and_hour_windows() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.0)
    start = clock.now()
    granted: list[float] = []

    async def burst() -> None:
        for _ in range(35):
            await limiter.acquire("5265877635", "onlineSession")       # 10/s, 30/min, 120/h
            granted.append(clock.now() - start)

    await clock.drive(burst())
    assert granted[:10] == [0.0] * 10
    assert granted[10:20] == [1.0] * 10
    assert granted[20:30] == [2.0] * 10
    assert granted[30:] == [60.0] * 5                                  # the minute window is full
    assert_windows_respected([start + g for g in granted], PRODUCTION_LIMITS["onlineSession"], "burst")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_bursts_from_many_callers_never_exceed_any_window(seed: int) -> None:
    rng = random.Random(seed)
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.0)
    contexts = ["1111111111", "2222222222"]
    groups = ["invoiceSend", "invoiceMetadata", "sessionMisc", "batchSession", "batchSessionClose"]
    granted: dict[tuple[str, str], list[float]] = {}

    async def caller() -> None:
        context, group = rng.choice(contexts), rng.choice(groups)
        for _ in range(rng.randint(5, 40)):
            if rng.random() < 0.3:
                await clock.sleep(rng.choice([0.0, 0.01, 0.3, 2.0, 45.0]))
            await limiter.acquire(context, group)
            granted.setdefault((context, group), []).append(clock.now())

    async def everyone() -> None:
        await asyncio.gather(*(caller() for _ in range(60)))

    await clock.drive(everyone())
    assert sum(len(v) for v in granted.values()) > 600
    for (context, group), stamps in granted.items():
        assert_windows_respected(stamps, PRODUCTION_LIMITS[group], f"{context}/{group}")


async def test_contexts_and_groups_have_separate_buckets_and_close_does_not_use_the_open_budget() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock)
    for _ in range(10):
        await limiter.acquire("1111111111", "batchSession")
    assert limiter.delay("1111111111", "batchSession") > 0.9
    assert limiter.delay("2222222222", "batchSession") == 0          # another context (§7)
    assert limiter.delay("1111111111", "batchSessionClose") == 0     # separate close bucket (§14.3)
    assert limiter.delay("1111111111", "invoiceSend") == 0


async def test_the_margin_widens_every_window() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.25)
    for _ in range(8):
        await limiter.acquire("c", "invoiceDownload")                # 8/s
    assert limiter.delay("c", "invoiceDownload") == pytest.approx(1.25)


async def test_a_429_blocks_every_caller_in_the_context_until_retry_after() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock)
    start = clock.now()
    await limiter.penalise("1111111111", "invoiceSend", 30.0)
    done: dict[str, float] = {}

    async def call(group: str) -> None:
        await limiter.acquire("1111111111", group)
        done[group] = clock.now() - start

    async def other_context() -> None:
        await limiter.acquire("2222222222", "invoiceSend")
        done["other"] = clock.now() - start

    await clock.drive(asyncio.gather(call("invoiceSend"), call("sessionMisc"), other_context()))
    assert done == {"invoiceSend": 30.0, "sessionMisc": 30.0, "other": 0.0}
    await limiter.penalise("1111111111", "invoiceSend", 5.0)         # a shorter block never shortens one
    await limiter.penalise("1111111111", "invoiceSend", 60.0)
    assert limiter.delay("1111111111", "invoiceSend") == pytest.approx(60.0)


async def test_a_cancelled_waiter_does_not_consume_budget() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock)

    async def spend() -> None:
        for _ in range(20):
            await limiter.acquire("c", "invoiceExport")              # 8/s, 16/min, 20/h

    await clock.drive(spend())
    waiter = asyncio.ensure_future(limiter.acquire("c", "invoiceExport"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(limiter.granted("c", "invoiceExport")) == 20


def test_rate_limits_body_all_17_groups_unknown_ignored_minus_one_is_unlimited() -> None:
    body: dict[str, Any] = {group: {"perSecond": v.to_json()[0], "perMinute": v.to_json()[1], "perHour": v.to_json()[2]}
            for group, v in PRODUCTION_LIMITS.items()}
    body["invoiceSend"] = {"perSecond": 100, "perMinute": 300, "perHour": 1800}
    body["someFutureGroup"] = {"perSecond": 1, "perMinute": 1, "perHour": 1}
    body["sessionList"] = {"perSecond": "five"}                     # malformed: keep the default
    parsed = parse_rate_limits(body)
    assert len(PRODUCTION_LIMITS) == 17 and set(parsed) == set(PRODUCTION_LIMITS)
    assert parsed["invoiceSend"] == GroupLimits(100, 300, 1800)
    assert parsed["anonymous"] == GroupLimits(60, None, None)
    assert parsed["global"].windows() == ()
    assert parsed["sessionList"] == PRODUCTION_LIMITS["sessionList"]


async def test_limits_from_the_server_apply_per_context() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.1)
    body = {"invoiceSend": {"perSecond": 2, "perMinute": 3, "perHour": 4}}
    limiter.apply_rate_limits_body("1111111111", body)

    async def spend() -> None:
        for _ in range(3):
            await limiter.acquire("1111111111", "invoiceSend")

    await clock.drive(spend())
    assert limiter.delay("1111111111", "invoiceSend") == pytest.approx(60.1 - 1.1)
    assert limiter.limits_for("2222222222", "invoiceSend") == PRODUCTION_LIMITS["invoiceSend"]
    assert limiter.limits_for("1111111111", "unknownGroup") == PRODUCTION_LIMITS["other"]


async def test_a_positive_global_limit_applies_across_contexts() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.0)
    table = dict(PRODUCTION_LIMITS)
    table["global"] = GroupLimits(3, None, None)
    limiter.set_limits("1111111111", table)
    stamps: list[float] = []

    async def call(context: str) -> None:
        await limiter.acquire(context, "sessionMisc")
        stamps.append(clock.now())

    await clock.drive(asyncio.gather(*(call(c) for c in ["1111111111", "2222222222", "3333333333"] * 3)))
    assert_windows_respected(stamps, table["global"], "global")
    assert max(stamps) - min(stamps) == pytest.approx(2.0)


# -- against the simulator's production profile, over HTTP -------------------------------------------------

SIM_NIP = "9999999999"
FAST_AUTH = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


class CountingGate:
    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.granted: Counter[str] = Counter()

    async def acquire(self, context: str, group: str) -> Grant:
        grant = await self.inner.acquire(context, group)
        self.granted[group] += 1
        return grant

    def ready(self, context: str, group: str) -> bool:
        return self.inner.ready(context, group)

    def answered(self, grant: Grant) -> None:
        self.inner.answered(grant)

    async def penalise(self, context: str, group: str, retry_after: float) -> None:
        await self.inner.penalise(context, group, retry_after)


class SharedTime:
    """The limiter's time is the simulator's ManualClock: a wait moves it forward and nobody sleeps. Time moves
    only once every burst request the limiter let through has been answered (so the simulator has counted it
    at the current time), as in real time, where a request takes milliseconds and the waits are seconds to an
    hour. Only what travels over HTTP is used: the grants on our side and the answers."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.gate: CountingGate | None = None
        self.baseline = 0
        self.answered = 0

    def limiter(self, limits: Any = None) -> CountingGate:
        self.gate = CountingGate(RateLimiter(limits, now=self.now, sleep=self.sleep))
        return self.gate

    def start(self) -> None:
        """The burst begins: what was granted so far in its group is answered already."""
        assert self.gate is not None
        self.baseline = self.gate.granted[BURST_GROUP]

    def now(self) -> float:
        return self.clock.now().timestamp()

    async def sleep(self, seconds: float) -> None:
        assert self.gate is not None
        for _ in range(10_000):                       # at most ~10 s of real time
            if self.gate.granted[BURST_GROUP] - self.baseline <= self.answered:
                break
            await asyncio.sleep(0.001)
        target = self.clock.now() + dt.timedelta(seconds=seconds)
        if target > self.clock.now():
            self.clock.set(target)
        await asyncio.sleep(0)


BURST_GROUP = "sessionList"                           # GET /sessions: 5/s, 10/min, 60/h on PRD


async def burst(sim: Any, http: aiohttp.ClientSession, time: SharedTime, gate: CountingGate, calls: int,
                *, adopt: bool = False, lower: dict[str, int] | None = None) -> list[BaseException | None]:
    token = await create_ksef_token(http, sim.base_url, SIM_NIP, ["InvoiceWrite", "InvoiceRead"])
    async with KsefClient("test", base_url=sim.base_url, clock=time.clock, gate=gate, auth_options=FAST_AUTH,
                          retry=RetryPolicy(attempts=1)) as client:     # a 429 would surface as RateLimited
        ctx = client.context(ContextIdentifier.nip(SIM_NIP), KsefToken.parse(token))
        await ctx.authenticate()
        if lower is not None:
            override = {group: dict(zip(("perSecond", "perMinute", "perHour"), v.to_json(), strict=True))
                        for group, v in PRODUCTION_LIMITS.items() if group not in NOT_OVERRIDABLE}
            override[BURST_GROUP] = lower
            await ctx.request("POST", "/testdata/rate-limits", json={"rateLimits": override}, expect=(200,))
        if adopt:
            await adopt_server_limits(gate.inner, ctx.auth)
        time.start()

        async def one() -> None:
            try:
                await ctx.request("GET", "/sessions", query={"sessionType": "Online", "pageSize": "10"},
                                  expect=(200,))
            finally:
                time.answered += 1

        outcomes = await asyncio.gather(*(one() for _ in range(calls)), return_exceptions=True)
        return list(outcomes)


NOT_OVERRIDABLE = {"onlineSessionClose", "batchSessionClose", "anonymous", "global"}


async def test_a_burst_beyond_the_production_budget_waits_instead_of_earning_a_429(
        sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    time = SharedTime(clock)
    gate = time.limiter()
    start = clock.now()
    outcomes = await burst(sim, http, time, gate, 70)                  # sessionList: 5/s, 10/min, 60/h
    assert [o for o in outcomes if o is not None] == []
    assert clock.now() - start >= dt.timedelta(hours=1)                # the last ten waited for the hour window
    assert_windows_respected(gate.inner.granted(f"Nip:{SIM_NIP}", "sessionList"), PRODUCTION_LIMITS["sessionList"],
                             "sessionList")


async def test_without_the_limiter_the_same_burst_earns_a_429(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """The control for the test above: the simulator does enforce the budget."""
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    time = SharedTime(clock)
    careless = time.limiter({**PRODUCTION_LIMITS, "sessionList": GroupLimits(1000, 1000, 1000)})
    outcomes = await burst(sim, http, time, careless, 12)
    limited = [o for o in outcomes if isinstance(o, RateLimited)]
    assert limited and all(o.retry_after > 0 for o in limited)


async def test_a_429_from_ksef_holds_every_group_of_that_context_for_retry_after(
        sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """KSeF's Retry-After reaches the limiter through the transport and blocks the whole context (§7: blocks
    escalate, so no sibling may earn a second 429); other contexts are not held."""
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    time = SharedTime(clock)
    careless = time.limiter({**PRODUCTION_LIMITS, "sessionList": GroupLimits(1000, 1000, 1000)})
    outcomes = await burst(sim, http, time, careless, 12)
    retry_after = max(o.retry_after for o in outcomes if isinstance(o, RateLimited))
    context = f"Nip:{SIM_NIP}"
    for group in ("sessionList", "invoiceSend", "sessionMisc"):
        assert careless.inner.delay(context, group) == pytest.approx(retry_after, abs=0.01)
    assert careless.inner.delay("Nip:1111111111", "sessionList") == 0


async def test_limits_read_from_get_rate_limits_are_obeyed(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    time = SharedTime(clock)
    gate = time.limiter()
    start = clock.now()
    lower = {"perSecond": 2, "perMinute": 3, "perHour": 4}             # below PRD: the defaults would trip it
    outcomes = await burst(sim, http, time, gate, 6, adopt=True, lower=lower)
    assert [o for o in outcomes if o is not None] == []
    assert gate.inner.limits_for(f"Nip:{SIM_NIP}", "sessionList") == GroupLimits(2, 3, 4)
    assert clock.now() - start >= dt.timedelta(hours=1)


async def test_a_429_in_one_company_never_slows_another(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """Issue #10: two companies (contexts) share one limiter, as in the daemon. One earns a 429 (its limiter
    was told a limit far above KSeF's); the other goes on at once, and nothing of either reaches KSeF during
    the block."""
    sim = await sim_factory(config=SimConfig(limits_profile="production"))
    careless = {**PRODUCTION_LIMITS, "sessionList": GroupLimits(1000, 1000, 1000)}
    limiter = RateLimiter(margin=0.25)
    tokens = {nip: await create_ksef_token(http, sim.base_url, nip, ["InvoiceWrite", "InvoiceRead"])
              for nip in (SIM_NIP, "1111111111")}
    async with KsefClient("test", base_url=sim.base_url, gate=limiter, auth_options=FAST_AUTH,
                          retry=RetryPolicy(attempts=1)) as client:
        first, second = (client.context(ContextIdentifier.nip(nip), KsefToken.parse(token))
                         for nip, token in tokens.items())
        await first.authenticate()
        await second.authenticate()
        limiter.set_limits(first.context.key, careless)

        async def sessions(ctx: Any) -> None:
            await ctx.request("GET", "/sessions", query={"sessionType": "Online", "pageSize": "10"}, expect=(200,))

        with pytest.raises(RateLimited) as refused:
            for _ in range(6):                                                    # KSeF allows 5/s
                await sessions(first)
        assert refused.value.retry_after >= 1
        assert limiter.delay(first.context.key, "invoiceSend") > 0.5             # the whole context waits
        started = asyncio.get_running_loop().time()
        for _ in range(5):
            await sessions(second)                                                # 5/s of its own: at once
        assert asyncio.get_running_loop().time() - started < 0.5
        assert limiter.delay(second.context.key, "sessionList") > 0              # its own window, now full
        assert limiter.delay(second.context.key, "invoiceSend") == 0
    async with http.get(f"{sim.root_url}/sim/ratelimits") as resp:
        tally = await resp.json()
    assert tally["tooManyRequests"] == 1 and tally["requestsDuringBlock"] == 0


# -- the `global` group once it stops being -1 (API 2.9.0, PROTOCOL.md §14.5, §15) -------------------------

def _with_global(per_second: int) -> dict[str, GroupLimits]:
    return {**PRODUCTION_LIMITS, "global": GroupLimits(per_second, None, None)}


async def test_requests_made_while_global_was_unlimited_count_once_it_turns_positive() -> None:
    clock = VirtualClock()
    limiter = limiter_on(clock, margin=0.0)

    async def spend() -> None:
        for context in ("1111111111", "2222222222", ""):
            await limiter.acquire(context, "sessionMisc")
        await limiter.acquire("1111111111", "other")

    await clock.drive(spend())
    assert limiter.delay("3333333333", "invoiceSend") == 0          # -1: no limit
    limiter.set_limits("1111111111", _with_global(5))              # GET /rate-limits now says 5 per second
    assert limiter.delay("3333333333", "invoiceSend") == 0          # 4 of 5 used this second
    await clock.drive(limiter.acquire("3333333333", "invoiceSend"))
    assert limiter.delay("4444444444", "invoiceStatus") == pytest.approx(1.0)


async def test_the_client_keeps_inside_a_positive_global_limit_of_the_simulator(
        sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """Two contexts, two groups, one IP: each stays inside its own group, together they would pass 6/s."""
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    other_nip = "1111111111"
    tokens = [await create_ksef_token(http, sim.base_url, nip, ["InvoiceWrite", "InvoiceRead"])
              for nip in (SIM_NIP, other_nip)]

    async def sleep(seconds: float) -> None:       # one request at a time: a wait just moves the clock
        clock.advance(seconds)
        await asyncio.sleep(0)

    limiter = RateLimiter(now=lambda: clock.now().timestamp(), sleep=sleep)
    async with KsefClient("test", base_url=sim.base_url, clock=clock, gate=limiter, auth_options=FAST_AUTH,
                          retry=RetryPolicy(attempts=1)) as client:     # a 429 would surface as RateLimited
        contexts = [client.context(ContextIdentifier.nip(nip), KsefToken.parse(token))
                    for nip, token in zip((SIM_NIP, other_nip), tokens, strict=True)]
        for ctx in contexts:
            await ctx.authenticate()
        sim.world.config.global_limit = (6, -1, -1)
        clock.advance(3600)
        await adopt_server_limits(limiter, contexts[0].auth)
        assert limiter.limits_for("", "global") == GroupLimits(6, None, None)
        start = clock.now()
        for _ in range(6):
            for ctx in contexts:
                await ctx.request("GET", "/sessions", query={"sessionType": "Online", "pageSize": "10"},
                                  expect=(200,))                       # sessionList: 5/s per context
                await ctx.request("GET", "/limits/context", expect=(200,))   # other: 10/s per context
    assert clock.now() - start >= dt.timedelta(seconds=3)             # 25 requests at 6 per second
