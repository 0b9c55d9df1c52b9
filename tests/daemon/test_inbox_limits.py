"""Issue #6 item 4 and done means: within the rate limits, and a 429 storm is waited out.

Time is virtual: the simulator, the client (its rate limiter and its sleeps) and the worker share one
ManualClock, and `drive` moves it whenever everything waits, so hours of KSeF budget pass in a second.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from ksefd.clock import ManualClock
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.ksef.ratelimit import RateLimiter, adopt_server_limits
from ksefd.sim import ratelimits as sim_limits
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import (
    BUYER_NIP,
    buyer_context,
    company,
    drive,
    inbox_files,
    open_store,
    send_batches,
    warsaw_day,
)
from tests.support.ksef_auth import access_token


def limiter(clock: ManualClock) -> RateLimiter:
    return RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep)


async def test_a_429_storm_is_waited_out_without_a_retry_storm(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="test", query_cap=50), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 300)       # 7 packages of at most 50
    # KSeF lowers this context's export limit to 2 per hour, while the client still believes in 20.
    strict = {g: dict(v) for g, v in sim_limits.PRODUCTION.items() if g in sim_limits.OVERRIDABLE}
    strict["invoiceExport"]["perHour"] = 2
    token = await access_token(http, sim.base_url, BUYER_NIP, ["InvoiceRead"])
    async with http.post(f"{sim.base_url}/testdata/rate-limits", json={"rateLimits": strict},
                         headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    clock.advance(60)
    gate = limiter(clock)
    client, context, buyer_token = await buyer_context(http, sim.base_url, clock, gate=gate, sleep=clock.sleep)
    # Without the nightly audit: it is due at `reconcile_at` (Polish time), and a run started in the evening
    # would reach it within the hours this test advances, its metadata exports adding refusals of their own.
    buyer = company(tmp_path, buyer_token, base_url=sim.base_url,
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock)
        started = clock.now()
        with capture_logs() as logs:
            for _ in range(20):
                await drive(clock, worker.run_cycle(), step=1)
                if len(inbox_files(buyer.folders.inbox)) == len(sent):
                    break
                clock.advance(await worker.seconds_until_due())     # sleep as run_forever would
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}
        refusals = [e for e in logs if e["event"] == "ratelimit.429"]
        failures = [e for e in logs if e["event"] == "inbox.cycle_failed"]
        # 7 exports at 2 per sliding hour: a handful of refusals, each waited out in full. KSeF answers a
        # request sent during a block with "...przedłużyło ją" (the block grows): that never happens.
        # A short Retry-After (at most 2 minutes) is waited out inside the request by the client; a long one
        # comes back to the worker, which schedules the retry after it.
        retried_inside = [e for e in logs if e["event"] == "ksef.rate_limited"]
        # The next package's export is started while a package is delivered (sync.py, prestart): a refusal
        # there is left to the next step, which waits it out like any other.
        prestarts_refused = [e for e in logs if e["event"] == "inbox.prestart_failed" and "RateLimited" in e["error"]]
        assert 3 <= len(refusals) <= 5
        async with http.get(f"{sim.root_url}/sim/ratelimits") as resp:
            tally = await resp.json()
        assert tally["requestsDuringBlock"] == 0, tally          # the simulator's own records (issue #10)
        assert worker.metrics.rate_limited + len(retried_inside) + len(prestarts_refused) == len(refusals)
        assert all(e["kind"] == "rate-limited" for e in failures) and len(failures) == worker.metrics.rate_limited
        assert not [e for e in failures if "przedłużyło" in e["error"]]
        assert all(e["retry_after"] <= 3600 for e in refusals)             # no escalation either
        # 7 exports at 2 per sliding hour: the 7th cannot start before 3 h after the 1st (it may start at exactly 3 h).
        assert clock.now() - started >= dt.timedelta(hours=3)
        assert worker.metrics.exports == 7 + worker.metrics.rate_limited + len(prestarts_refused)
        assert worker.metrics.duplicates_skipped == 6
    finally:
        await store.close()
        await client.close()


async def test_a_long_backfill_stays_within_the_production_limits_and_never_earns_a_429(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production", query_cap=20), clock=clock)
    sent = await send_batches(http, sim.base_url, clock, tmp_path, 500)       # 27 packages: over an hour's budget
    clock.advance(60)
    gate = limiter(clock)
    client, context, buyer_token = await buyer_context(http, sim.base_url, clock, gate=gate, sleep=clock.sleep)
    await adopt_server_limits(gate, context.auth)
    buyer = company(tmp_path, buyer_token, base_url=sim.base_url,      # no nightly audit: see the test above
                    receiving=f"backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}\nreconcile = false")
    store = await open_store(tmp_path / "state.sqlite3", clock)
    try:
        worker = InboxWorker(buyer, context, store, clock)
        started = clock.now()
        with capture_logs() as logs:
            report = await drive(clock, worker.run_cycle(), step=5)     # small steps: polls cost little time
        assert not report.failures
        assert inbox_files(buyer.folders.inbox) == {s.ksef_number: s.xml for s in sent}
        assert not [e for e in logs if e["event"] in ("ratelimit.429", "ksef.rate_limited")]
        assert [e for e in logs if e["event"] == "inbox.budget_wait"]
        assert worker.metrics.exports == 27
        assert clock.now() - started > dt.timedelta(hours=1)                  # the 21st export waited
    finally:
        await store.close()
        await client.close()
