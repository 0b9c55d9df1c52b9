"""Context and subject limits (issue #3 item 5; PROTOCOL.md §7, §11, §14.5): GET /limits/context with
the 2.7.1 collectiveIdentifier, the TEST override that shrinks session limits, GET /limits/subject."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from ksefd.samples import make_invoice
from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect, expect_error, sim_config

NIP = "9999999999"
TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
DEFAULTS = {"onlineSession": {"maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3, "maxInvoices": 10000},
            "batchSession": {"maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3, "maxInvoices": 10000},
            "collectiveIdentifier": {"maxInvoices": 500}}


async def context_limits(http: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with http.get(f"{base_url}/limits/context", headers=headers) as resp:
        body: dict[str, Any] = await expect(resp, 200)
        return body


async def test_session_limits_can_be_shrunk_and_reset(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    token = await access_token(http, sim.base_url, NIP)
    headers = {"Authorization": f"Bearer {token}"}
    assert await context_limits(http, sim.base_url, headers) == DEFAULTS

    shrunk = {"onlineSession": {"maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 2, "maxInvoices": 1},
              "batchSession": {"maxInvoiceSizeInMB": 2, "maxInvoiceWithAttachmentSizeInMB": 4, "maxInvoices": 7},
              "collectiveIdentifier": {"maxInvoices": 20}}
    async with http.post(f"{sim.base_url}/testdata/limits/context/session", json=shrunk, headers=headers) as resp:
        assert resp.status == 200
    assert await context_limits(http, sim.base_url, headers) == shrunk
    assert sim.world.store.get("context_limits", NIP) == shrunk       # the record online.py and batch.py read

    online = Online(http, sim.base_url, token)
    await online.open()
    await online.send(make_invoice(TEMPLATE, number="L/1"))
    async with online.send_raw(online.keys.send_body(make_invoice(TEMPLATE, number="L/2"))) as resp:
        await expect_error(resp, 21155)                               # maxInvoices 1 per online session

    async with http.delete(f"{sim.base_url}/testdata/limits/context/session", headers=headers) as resp:
        assert resp.status == 200
    assert await context_limits(http, sim.base_url, headers) == DEFAULTS


@pytest.mark.sends_invalid_requests
async def test_collective_identifier_is_required_in_the_override(sim_factory: Any,
                                                                 http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    headers = {"Authorization": f"Bearer {await access_token(http, sim.base_url, NIP)}"}
    body = {"onlineSession": DEFAULTS["onlineSession"], "batchSession": DEFAULTS["batchSession"]}
    async with http.post(f"{sim.base_url}/testdata/limits/context/session", json=body, headers=headers) as resp:
        detail = await expect_error(resp, 21405)
    assert "collectiveIdentifier" in detail["details"][0]
    async with http.post(f"{sim.base_url}/testdata/limits/context/session",
                         json={**DEFAULTS, "collectiveIdentifier": {"maxInvoices": 1}}, headers=headers) as resp:
        await expect_error(resp, 21405)                               # minimum 2 (§14.5)


async def test_subject_limits(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    headers = {"Authorization": f"Bearer {await access_token(http, sim.base_url, NIP)}"}
    async with http.get(f"{sim.base_url}/limits/subject", headers=headers) as resp:
        body = await expect(resp, 200)
    assert set(body) == {"enrollment", "certificate"}
    assert body["enrollment"]["maxEnrollments"] >= body["certificate"]["maxCertificates"] > 0
