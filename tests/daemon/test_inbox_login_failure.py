"""A login that fails during an inbox cycle is the company's problem, not the inbox's: the worker hands it to
the company's connection, which keeps the one hold for both halves (issue #9: holds in one place)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.clock import ManualClock
from ksefd.daemon.failures import Failure
from ksefd.daemon.inbox.worker import InboxWorker
from ksefd.sim.config import SimConfig
from tests.daemon.inbox_support import buyer_context, company, open_store
from tests.support.ksef_auth import owner_login


async def test_a_revoked_token_during_a_cycle_is_handed_to_the_company_hold(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    client, context, token = await buyer_context(http, sim.base_url, clock)
    owner = await owner_login(http, sim.base_url, "1111111111")
    async with http.delete(f"{sim.base_url}/tokens/{token.split('|')[0]}",
                           headers={"Authorization": f"Bearer {owner.access_token}"}) as resp:
        assert resp.status == 204, await resp.text()
    buyer = company(tmp_path, token, base_url=sim.base_url)
    store = await open_store(tmp_path / "state.sqlite3", clock)
    handed: list[Failure] = []

    async def login_failed(failure: Failure) -> None:
        handed.append(failure)

    try:
        for _ in range(50):                       # Revoking -> Revoked is asynchronous in KSeF
            worker = InboxWorker(buyer, context, store, clock, on_login_failure=login_failed)
            report = await worker.run_cycle(force=True)
            if handed:
                break
            await asyncio.sleep(0.02)
        assert report.failures and handed and handed[0].about_credentials, (report.failures, handed)
        assert handed[0].verdict == "hold"
    finally:
        await store.close()
        await client.close()
