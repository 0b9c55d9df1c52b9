"""Rate limits over HTTP (issue #3 item 3; PROTOCOL.md §7, §14.3, §14.5): sliding windows per
(context, IP, group), 429 with Retry-After and a body naming the group, escalating blocks, the
17 groups of GET /rate-limits, the TEST overrides and the profiles. Time moves on a ManualClock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect

NIP = "9999999999"
OTHER_NIP = "1111111111"
GROUPS_17 = {"onlineSession", "onlineSessionClose", "batchSession", "batchSessionClose", "invoiceSend",
             "invoiceStatus", "sessionList", "sessionInvoiceList", "sessionMisc", "invoiceMetadata", "invoiceExport",
             "invoiceExportStatus", "invoiceDownload", "collectiveIdentifier", "other", "anonymous", "global"}
TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()


def production(**settings: Any) -> SimConfig:
    return SimConfig(limits_profile="production", access_token_ttl_s=24 * 3600, **settings)


async def get_limits(http: aiohttp.ClientSession, base_url: str, token: str,
                     headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    return await http.get(f"{base_url}/rate-limits", headers={"Authorization": f"Bearer {token}", **(headers or {})})


async def statuses(http: aiohttp.ClientSession, base_url: str, token: str, count: int) -> list[int]:
    return await codes(count, lambda: get_limits(http, base_url, token))


async def codes(count: int, send: Callable[[], Awaitable[aiohttp.ClientResponse]]) -> list[int]:
    """The statuses of `count` requests made one after another by `send`."""
    found = []
    for _ in range(count):
        async with await send() as resp:
            await resp.read()
            found.append(resp.status)
    return found


async def production_sim(sim_factory: Any, http: aiohttp.ClientSession) -> tuple[Any, ManualClock, str]:
    """A simulator under the production profile on a ManualClock, an access token for NIP, and an hour
    later, so the logins' own requests have left every window."""
    clock = ManualClock()
    sim = await sim_factory(config=production(), clock=clock)
    token = await access_token(http, sim.base_url, NIP)
    clock.advance(3600)
    return sim, clock, token


async def test_429_with_retry_after_under_the_production_profile(sim_factory: Any,
                                                                 http: aiohttp.ClientSession) -> None:
    sim, clock, token = await production_sim(sim_factory, http)
    assert await statuses(http, sim.base_url, token, 10) == [200] * 10         # other: 10 per second
    async with await get_limits(http, sim.base_url, token) as resp:
        body = await expect(resp, 429)
        assert resp.headers["Retry-After"] == "1"
    assert body["status"]["code"] == 429 and body["status"]["description"] == "Too Many Requests"
    assert "other" in body["status"]["details"][0] and "10 żądań na sekundę" in body["status"]["details"][0]

    clock.advance(1)                                           # the window slid: allowed again
    assert await statuses(http, sim.base_url, token, 10) == [200] * 10
    async with await get_limits(http, sim.base_url, token, {"X-Error-Format": "problem-details"}) as resp:
        problem = await expect(resp, 429)
        assert resp.headers["Retry-After"] == "2"              # a second breach doubles the block
        assert resp.content_type == "application/problem+json" and "other" in problem["detail"]
    async with await get_limits(http, sim.base_url, token) as resp:
        await expect(resp, 429)
        assert resp.headers["Retry-After"] == "4"              # retrying inside the block extends it
    clock.advance(3)
    assert await statuses(http, sim.base_url, token, 1) == [429]
    clock.advance(60)
    assert await statuses(http, sim.base_url, token, 1) == [200]


def from_another_ip() -> aiohttp.ClientSession:
    """A client whose requests come from 127.0.0.2 (the whole 127/8 is loopback on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


async def test_metadata_queries_hit_the_hourly_limit_per_context_and_ip(sim_factory: Any,
                                                                        http: aiohttp.ClientSession) -> None:
    """invoiceMetadata 8/s, 16/min, 20/h (PROTOCOL.md §6.1, §7): the hour is the binding window."""
    sim, clock, token = await production_sim(sim_factory, http)
    body = {"subjectType": "Subject1", "dateRange": {"dateType": "PermanentStorage",
                                                      "from": (clock.now() - dt.timedelta(days=1)).isoformat()}}
    headers = {"Authorization": f"Bearer {token}"}

    async def burst(count: int, client: aiohttp.ClientSession = http) -> list[int]:
        return await codes(count, lambda: client.post(f"{sim.base_url}/invoices/query/metadata", json=body,
                                                      headers=headers))

    assert await burst(9) == [200] * 8 + [429]                 # 8 per second
    clock.advance(60)                                           # past the block; the minute slid too
    assert await burst(8) == [200] * 8
    clock.advance(1)
    assert await burst(4) == [200] * 4                         # 20 in the hour, only 12 of them this minute
    async with http.post(f"{sim.base_url}/invoices/query/metadata", json=body, headers=headers) as resp:
        refused = await expect(resp, 429)
        assert int(resp.headers["Retry-After"]) > 3000          # until the first of the hour leaves it (and more)
    assert "20 żądań na godzinę" in refused["status"]["details"][0]
    assert "invoiceMetadata" in refused["status"]["details"][0]
    async with from_another_ip() as other:
        assert await burst(1, other) == [200]                   # (context, IP): a fresh budget elsewhere


async def test_per_minute_window_and_separate_contexts(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=production(), clock=clock)
    first = await access_token(http, sim.base_url, NIP)
    second = await access_token(http, sim.base_url, OTHER_NIP)
    clock.advance(3600)
    for _ in range(3):                                          # 30 per minute, 10 per second
        assert await statuses(http, sim.base_url, first, 10) == [200] * 10
        clock.advance(1)
    async with await get_limits(http, sim.base_url, first) as resp:
        body = await expect(resp, 429)
        assert int(resp.headers["Retry-After"]) == 57          # until the first (at t-3 s) leaves the minute
    assert "30 żądań na minutę" in body["status"]["details"][0]
    assert await statuses(http, sim.base_url, second, 10) == [200] * 10  # another context, same IP


async def test_close_has_its_own_group(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """2.8: closing no longer spends the opening budget (PROTOCOL.md §14.3)."""
    sim, _, token = await production_sim(sim_factory, http)
    sessions = [Online(http, sim.base_url, token) for _ in range(11)]
    for online in sessions[:10]:
        await online.open()
    async with await sessions[10].open_raw() as resp:
        body = await expect(resp, 429)
    assert "grupy onlineSession." in body["status"]["details"][0]
    for online in sessions[:10]:
        await online.close()                                    # onlineSessionClose: 20 per second


async def test_public_endpoints_are_limited_per_ip_and_17_groups_reported(sim_factory: Any,
                                                                          http: aiohttp.ClientSession) -> None:
    sim, _, token = await production_sim(sim_factory, http)
    async with await get_limits(http, sim.base_url, token) as resp:
        limits = await expect(resp, 200)
    assert set(limits) == GROUPS_17
    assert limits["anonymous"] == {"perSecond": 60, "perMinute": -1, "perHour": -1}
    assert limits["global"] == {"perSecond": -1, "perMinute": -1, "perHour": -1}
    assert limits["onlineSessionClose"] == {"perSecond": 20, "perMinute": 60, "perHour": 240}
    assert limits["batchSessionClose"] == {"perSecond": 20, "perMinute": 40, "perHour": 120}
    assert limits["invoiceMetadata"] == {"perSecond": 8, "perMinute": 16, "perHour": 20}
    codes = []
    for _ in range(61):
        async with http.get(f"{sim.base_url}/security/public-key-certificates") as resp:
            codes.append(resp.status)
            last = await resp.json()
    assert codes[:60] == [200] * 60 and codes[60] == 429
    assert "anonymous" in last["status"]["details"][0]
    async with http.post(f"{sim.base_url}/auth/challenge") as resp:
        assert resp.status == 429                              # one budget for every public operation
    async with from_another_ip() as other, other.get(f"{sim.base_url}/security/public-key-certificates") as resp:
        assert resp.status == 200                              # per IP: another address is not blocked


async def test_testdata_overrides_production_profile_and_reset(sim_factory: Any,
                                                              http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=SimConfig(limits_profile="off", access_token_ttl_s=24 * 3600), clock=clock)
    token = await access_token(http, sim.base_url, NIP)
    headers = {"Authorization": f"Bearer {token}"}
    async with await get_limits(http, sim.base_url, token) as resp:
        assert set((await expect(resp, 200))["other"].values()) == {-1}     # off: -1 means no limit (§14.5)
    assert await statuses(http, sim.base_url, token, 40) == [200] * 40

    async with http.post(f"{sim.base_url}/testdata/rate-limits/production", headers=headers) as resp:
        assert resp.status == 200
    clock.advance(3600)
    assert await statuses(http, sim.base_url, token, 11) == [200] * 10 + [429]

    clock.advance(3600)
    custom = {group: {"perSecond": 100, "perMinute": 1000, "perHour": 10000} for group in
              ("onlineSession", "batchSession", "invoiceSend", "invoiceStatus", "sessionList", "sessionInvoiceList",
               "sessionMisc", "invoiceMetadata", "invoiceExport", "invoiceExportStatus", "invoiceDownload",
               "collectiveIdentifier")}
    custom["other"] = {"perSecond": 2, "perMinute": 1000, "perHour": 10000}
    custom["onlineSessionClose"] = {"perSecond": 5, "perMinute": 5, "perHour": 5}   # not in the 13: ignored
    async with http.post(f"{sim.base_url}/testdata/rate-limits", json={"rateLimits": custom}, headers=headers) as r:
        assert r.status == 200
    async with await get_limits(http, sim.base_url, token) as resp:
        limits = await expect(resp, 200)
    assert limits["other"]["perSecond"] == 2 and limits["invoiceSend"]["perSecond"] == 100
    assert limits["onlineSessionClose"] == {"perSecond": -1, "perMinute": -1, "perHour": -1}   # the profile's
    assert await statuses(http, sim.base_url, token, 1) == [429]     # 2 requests already this second

    clock.advance(3600)
    async with http.delete(f"{sim.base_url}/testdata/rate-limits", headers=headers) as resp:
        assert resp.status == 200
    assert await statuses(http, sim.base_url, token, 40) == [200] * 40


async def test_presigned_uploads_are_not_limited(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=production(), clock=ManualClock())
    batch = Batch(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    archive = zip_archive(invoices(TEMPLATE, 1))
    encrypted = batch.encrypt([archive])
    await batch.open(await batch.open_body(archive, encrypted))
    for _ in range(100):
        assert (await batch.put(1, encrypted[0]))[0] == 201


async def test_requests_arriving_during_a_block_are_counted_for_tests(sim_factory: Any,
                                                                      http: aiohttp.ClientSession) -> None:
    """GET /sim/ratelimits (issue #10): how many requests arrived while their (context, IP, group) was blocked,
    how many 429s were given and the longest Retry-After, so a test can assert "nothing was sent into a block"."""
    sim, clock, token = await production_sim(sim_factory, http)

    async def tally() -> dict[str, Any]:
        async with http.get(f"{sim.root_url}/sim/ratelimits") as resp:
            assert resp.status == 200
            found: dict[str, Any] = await resp.json()
            return found

    assert (await tally())["requestsDuringBlock"] == 0
    assert await statuses(http, sim.base_url, token, 11) == [200] * 10 + [429]   # the breach: not "during"
    after_breach = await tally()
    assert after_breach["requestsDuringBlock"] == 0 and after_breach["tooManyRequests"] == 1
    assert [b["group"] for b in after_breach["blocks"]] == ["other"]
    assert await statuses(http, sim.base_url, token, 2) == [429, 429]            # sent into the block
    during = await tally()
    assert during["requestsDuringBlock"] == 2 and during["longestRetryAfter"] == 4
    assert during["duringBlock"] == [{"context": NIP, "ip": "127.0.0.1", "group": "other", "requests": 2}]
    clock.advance(3600)
    assert await statuses(http, sim.base_url, token, 1) == [200]
    assert (await tally())["requestsDuringBlock"] == 2 and (await tally())["blocks"] == []


async def test_a_positive_global_group_limits_one_ip_across_contexts_and_groups(
        sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """`global` (PROTOCOL.md §14.5, §15: 75/s in the 2.9.0 example) is per IP across every context and
    operation; it is reported by GET /rate-limits and checked before the request's own group."""
    clock = ManualClock()
    sim = await sim_factory(config=production(), clock=clock)
    first = await access_token(http, sim.base_url, NIP)
    second = await access_token(http, sim.base_url, OTHER_NIP)
    sim.world.config.global_limit = (6, -1, -1)      # switched on after the logins, as KSeF may do one day
    clock.advance(3600)
    async with await get_limits(http, sim.base_url, first) as resp:
        assert (await expect(resp, 200))["global"] == {"perSecond": 6, "perMinute": -1, "perHour": -1}
    assert await statuses(http, sim.base_url, second, 2) == [200, 200]          # other group, other context
    async with http.get(f"{sim.base_url}/security/public-key-certificates") as resp:
        assert resp.status == 200                                               # anonymous counts too
    sessions = lambda: http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online", "pageSize": "10"},  # noqa: E731
                                headers={"Authorization": f"Bearer {first}"})
    assert await codes(2, sessions) == [200, 200]                               # sessionList: 5 per second
    async with await sessions() as resp:
        body = await expect(resp, 429)                                          # the seventh request this second
    assert "grupy global" in body["status"]["details"][0] and "6 żądań na sekundę" in body["status"]["details"][0]
    async with from_another_ip() as other:
        assert await statuses(other, sim.base_url, second, 1) == [200]          # per IP: another address passes
    clock.advance(5)
    assert await statuses(http, sim.base_url, second, 1) == [200]


async def test_global_group_of_minus_one_limits_nothing(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    token = await access_token(http, sim.base_url, NIP)
    assert await statuses(http, sim.base_url, token, 100) == [200] * 100
