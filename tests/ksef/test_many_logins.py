"""Many companies logging in at once through one client (issue #16 point 4): the public keys are fetched once
per KSeF target, and a 429 on the per-IP public limit (PROTOCOL.md §7: 60/s for the anonymous operations)
holds every company's next login call until the block ends, instead of each company sending into it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ksefd.ksef import RateLimiter
from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import KsefToken
from ksefd.ksef.ratelimit import PER_IP_MARGIN, PRODUCTION_LIMITS, GroupLimits
from ksefd.ksef.ratelimit_flight import FRESH_SECONDS, InFlight, continuing
from ksefd.sim.app import create_app
from ksefd.sim.config import SimConfig
from tests.ksef.virtual_time import VirtualClock
from tests.support.ksef_auth import create_ksef_token

FAST = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


def nip(n: int) -> str:
    weights = (6, 5, 7, 2, 3, 4, 5, 6, 7)
    while True:
        digits = f"{n:09d}"
        check = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
        if check != 10:
            return digits + str(check)
        n += 1


class CountingSim:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.order: list[str] = []
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/v2"

    async def tally(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.base_url[:-3] + "/sim/ratelimits") as resp:
            result: dict[str, Any] = await resp.json()
            return result


@pytest.fixture
async def counting_sim() -> AsyncIterator[CountingSim]:
    """The simulator (production limits) with a middleware counting requests and 429s per operation."""
    sim = CountingSim()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = f"{request.method} {resource.canonical if resource else request.path}"
        sim.counts[name] += 1
        sim.order.append(name)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 429:
                sim.refused[name] += 1
            raise

    app = create_app(SimConfig(limits_profile="production"))
    app.middlewares.insert(0, count)
    sim.server = TestServer(app, host="0.0.0.0")
    await sim.server.start_server()
    yield sim
    await sim.server.close()


async def tokens(sim: CountingSim, count: int) -> list[tuple[str, str]]:
    """(NIP, KSeF token) pairs, each made from its own loopback address: their public calls count in other
    per-IP windows than the client's (127.0.0.1)."""
    async def one(n: int) -> tuple[str, str]:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{n + 2}", 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            return nip(526_000_000 + n * 97), await create_ksef_token(
                http, sim.base_url, nip(526_000_000 + n * 97), ["InvoiceRead"])
    made = await asyncio.gather(*(one(n) for n in range(count)))
    sim.counts.clear()
    sim.order.clear()
    return list(made)


async def test_companies_logging_in_at_once_fetch_the_public_keys_once(counting_sim: CountingSim) -> None:
    pairs = await tokens(counting_sim, 12)
    client = KsefClient("test", base_url=counting_sim.base_url, gate=RateLimiter(), auth_options=FAST)
    try:
        contexts = [client.context(ContextIdentifier.nip(n), KsefToken.parse(t)) for n, t in pairs]
        await asyncio.gather(*(c.authenticate() for c in contexts))
        assert counting_sim.counts["GET /v2/security/public-key-certificates"] == 1
        assert counting_sim.counts["POST /v2/auth/ksef-token"] == 12
        await contexts[0].authenticate()                 # a later login takes the kept keys too
        assert counting_sim.counts["GET /v2/security/public-key-certificates"] == 1
    finally:
        await client.close()


async def test_a_429_on_the_per_ip_public_limit_holds_every_companys_login(counting_sim: CountingSim) -> None:
    """Another program on this machine spent the IP's 60 public calls of this second while the daemon was
    quiet: the first login call earns a 429, and no company sends a login call into the block it started
    (which would lengthen it, §7); once it ends, every company logs in."""
    pairs = await tokens(counting_sim, 10)
    client = KsefClient("test", base_url=counting_sim.base_url, gate=RateLimiter(), auth_options=FAST)
    try:
        contexts = [client.context(ContextIdentifier.nip(n), KsefToken.parse(t)) for n, t in pairs]
        await client.public_keys.get("KsefTokenEncryption")     # known: each login is 4 public calls
        await asyncio.sleep(FRESH_SECONDS)                       # the daemon was quiet a moment
        async with aiohttp.ClientSession() as http:      # the other program, from 127.0.0.1 too
            for _ in range(60):
                async with http.post(f"{counting_sim.base_url}/auth/challenge") as resp:
                    assert resp.status == 200
        await asyncio.gather(*(c.authenticate() for c in contexts))
        tally = await counting_sim.tally()
        assert all(c.auth.tokens is not None for c in contexts)
        assert tally["tooManyRequests"] == 1 and tally["requestsDuringBlock"] == 0, tally
    finally:
        await client.close()


async def test_one_public_call_at_a_time_until_one_passes() -> None:
    """At the start and after a 429 on a per-IP limit one call goes alone; the others follow its clean answer,
    at most `most` at once."""
    flight = InFlight(3, now=lambda: 0.0)
    entered: list[int] = []

    async def call(n: int) -> None:
        await flight.enter()
        entered.append(n)

    tasks = [asyncio.create_task(call(n)) for n in range(6)]
    await asyncio.sleep(0)
    assert entered == [0]                         # the probe alone
    flight.leave()                                # answered ...
    flight.penalised()                            # ... with a 429: still one at a time
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert entered == [0, 1]
    flight.leave()                                # answered without a 429: up to three at once
    for _ in range(3):
        await asyncio.sleep(0)
    assert entered == [0, 1, 2, 3, 4] and flight.running == 3
    for _ in range(3):
        flight.leave()
    await asyncio.gather(*tasks)
    assert entered == list(range(6))


async def test_public_calls_are_paced_closer_to_the_per_ip_limit_than_a_contexts_calls() -> None:
    """60/s per IP for the public calls, counted from each answer (no earlier than KSeF stamped the call) and
    widened only by PER_IP_MARGIN for the clocks; a context's groups keep the full margin. 1 000 logins x 4 public
    calls: ~68 s, not ~70 s (0.05 s) or ~83 s (0.25 s)."""
    clock = VirtualClock()
    limiter = RateLimiter(now=clock.now, sleep=clock.sleep)      # the default margin, 0.25 s
    start = clock.now()

    async def calls(context: str, group: str, count: int) -> list[float]:
        times = []
        for _ in range(count):
            limiter.answered(await limiter.acquire(context, group))
            times.append(round(clock.now() - start, 3))
        return times

    public = await clock.drive(calls("", "anonymous", 181))
    assert PER_IP_MARGIN == 0.016
    assert public[:60] == [0.0] * 60 and public[60] == 1.016 and public[120] == 2.032 and public[180] == 3.048
    status = await clock.drive(calls("5265877635", "invoiceStatus", 31))          # 30/s
    assert round(status[30] - status[0], 3) == 1.25


async def test_a_public_call_on_the_way_counts_in_every_window_until_its_answer() -> None:
    """A call not yet answered may reach KSeF at any moment, so it is not let out of the window at its send time
    plus a margin (a slow one would then arrive beside the calls sent after it: a 429 from the per-IP limit):
    it counts until its answer, and from then on the next call waits a second from that answer."""
    clock = VirtualClock()
    limiter = RateLimiter({**PRODUCTION_LIMITS, "anonymous": GroupLimits.of(2, -1, -1)}, now=clock.now,
                          sleep=clock.sleep)
    start = clock.now()

    async def scenario() -> list[float]:
        limiter.answered(await limiter.acquire("", "anonymous"))
        slow = await limiter.acquire("", "anonymous")             # on the way ...
        other = await limiter.acquire("", "anonymous")            # ... when this one goes, a second after the first
        granted = [round(clock.now() - start, 3)]

        async def answer_late() -> None:
            await clock.sleep(3.0 - (clock.now() - start))
            limiter.answered(slow)                                  # 3 s after its send

        late = asyncio.create_task(answer_late())
        limiter.answered(await limiter.acquire("", "anonymous"))   # both earlier ones on the way: it must wait
        granted.append(round(clock.now() - start, 3))
        await late
        limiter.answered(other)
        return granted

    granted = await clock.drive(scenario())
    assert granted == [1.016, 4.016]      # without the rule: [1.016, 1.016], beside two calls still on the way

async def test_a_login_under_way_goes_before_the_next_logins_challenge(counting_sim: CountingSim) -> None:
    """Served in arrival order, many logins went through in phases (every challenge, then every token, ...) and
    no company was connected before the last phase. A login's later calls go first: the first company is
    connected while most challenges are still to come, and every company still logs in."""
    pairs = await tokens(counting_sim, 24)
    client = KsefClient("test", base_url=counting_sim.base_url, gate=RateLimiter(), auth_options=FAST)
    try:
        contexts = [client.context(ContextIdentifier.nip(n), KsefToken.parse(t)) for n, t in pairs]
        await client.public_keys.get("KsefTokenEncryption")
        await asyncio.gather(*(c.authenticate() for c in contexts))
        assert all(c.auth.tokens is not None for c in contexts)
        order = counting_sim.order
        first_redeem = order.index("POST /v2/auth/token/redeem")
        challenges_before = order[:first_redeem].count("POST /v2/auth/challenge")
        assert challenges_before <= 12, order
    finally:
        await client.close()


async def test_a_continuing_call_takes_the_next_place_before_earlier_waiters() -> None:
    flight = InFlight(1, now=lambda: 0.0)
    entered: list[str] = []

    async def call(name: str, carries_on: bool) -> None:
        if carries_on:
            with continuing():
                await flight.enter()
        else:
            await flight.enter()
        entered.append(name)

    await flight.enter()                          # one call on the way
    tasks = [asyncio.create_task(call("challenge", False))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(call("redeem", True)))
    await asyncio.sleep(0)
    assert entered == []
    flight.leave()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert entered == ["redeem"]
    flight.leave()
    await asyncio.gather(*tasks)
    assert entered == ["redeem", "challenge"]
