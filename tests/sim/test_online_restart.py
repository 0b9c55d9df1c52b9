"""State survives a restart with --state (issue #2 item 7): sessions, invoices, KSeF numbers and
UPOs are read back from SQLite, an open session keeps its key, and pending work finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, sim_config

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"


async def test_sessions_and_invoices_survive_a_restart(sim_factory: Any, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    config = sim_config(state_path=tmp_path / "sim.db")
    first = await sim_factory(config=config)
    online = Online(http, first.base_url, await access_token(http, first.base_url, NIP))
    await online.open()
    accepted = await online.submit(SAMPLE)
    closed = Online(http, first.base_url, online.token)
    await closed.open()
    await closed.submit(SAMPLE.replace(b"FM2026/02/150", b"RESTART/1"))
    await closed.close()
    closed_status = await closed.wait_session()
    upo_before, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{accepted['referenceNumber']}/upo")
    await first.server.close()

    second = await sim_factory(config=sim_config(state_path=tmp_path / "sim.db"))
    for flow in (online, closed):
        flow.base_url = second.base_url
    # The access token is still valid: the signing secret and the auth operation were kept too.
    again = await online.invoice(accepted["referenceNumber"])
    assert again["ksefNumber"] == accepted["ksefNumber"] and again["status"]["code"] == 200
    upo_after, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{accepted['referenceNumber']}/upo")
    assert upo_after == upo_before
    assert (await closed.status())["upo"]["pages"][0]["referenceNumber"] == \
        closed_status["upo"]["pages"][0]["referenceNumber"]
    later = await online.submit(SAMPLE.replace(b"FM2026/02/150", b"RESTART/2"))   # same key and IV after restart
    assert later["status"]["code"] == 200 and later["ordinalNumber"] == 2
    duplicate = await online.submit(SAMPLE)
    assert duplicate["status"]["code"] == 440           # the duplicate index is rebuilt from the store
    assert duplicate["status"]["extensions"]["originalKsefNumber"] == accepted["ksefNumber"]


async def test_pending_invoices_finish_after_a_restart(sim_factory: Any, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    first = await sim_factory(config=sim_config(state_path=tmp_path / "sim.db", processing_delay_s=30))
    online = Online(http, first.base_url, await access_token(http, first.base_url, NIP))
    await online.open()
    reference = await online.send(SAMPLE)
    await online.close()
    assert (await online.invoice(reference))["status"]["code"] == 100
    await first.server.close()

    second = await sim_factory(config=sim_config(state_path=tmp_path / "sim.db"))
    online.base_url = second.base_url
    assert (await online.wait_invoice(reference))["status"]["code"] == 200
    assert (await online.wait_session())["status"]["code"] == 200
