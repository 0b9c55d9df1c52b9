"""Path, query and header parameters are checked against openapi.json as KSeF checks them (PROTOCOL.md §10.2:
21405 "Błąd walidacji danych wejściowych" with the validator's words naming the parameter), after the caller
is authenticated (401) and authorised (403); continuation tokens of another listing are 21418."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token, bearer, create_ksef_token, owner_login, start_token_auth
from tests.support.online_flow import Online, expect, expect_error, sim_config

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
SHORT_REFERENCE = "20261122-SO-0000000000-0000000000"          # 33 characters: ReferenceNumber needs 36
pytestmark = pytest.mark.sends_invalid_requests


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """Rate limits off (see online_flow.sim_config): these tests send many requests in a second."""
    return await sim_factory(config=sim_config())


async def refused(http: aiohttp.ClientSession, method: str, url: str, token: str | None, code: int = 21405,
                  **kwargs: Any) -> str:
    """Send; expect 400 with `code`; return the first detail."""
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        detail = await expect_error(resp, code)
    return str((detail.get("details") or [""])[0])


async def test_malformed_path_parameters_are_21405(sim: Any, http: aiohttp.ClientSession) -> None:
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()
    accepted = await online.submit(SAMPLE)
    base, token = f"{sim.base_url}/sessions", online.token
    assert "referenceNumber" in await refused(http, "GET", f"{base}/{SHORT_REFERENCE}", token)
    assert "referenceNumber" in await refused(http, "POST", f"{base}/online/{SHORT_REFERENCE}/close", token)
    assert "referenceNumber" in await refused(http, "POST", f"{base}/online/{SHORT_REFERENCE}/invoices", token,
                                              json=online.keys.send_body(SAMPLE))
    assert "invoiceReferenceNumber" in await refused(
        http, "GET", f"{base}/{online.reference}/invoices/{accepted['referenceNumber']}X", token)
    assert "upoReferenceNumber" in await refused(http, "GET", f"{base}/{online.reference}/upo/EU-1", token)
    bad_number = accepted["ksefNumber"].replace(f"{NIP}-", "0999999999-")       # NIP cannot start with 0
    assert "ksefNumber" in await refused(http, "GET", f"{base}/{online.reference}/invoices/ksef/{bad_number}/upo",
                                         token)
    assert "referenceNumber" in await refused(http, "GET", f"{sim.base_url}/tokens/EC-1", token)
    # A well-formed number that does not exist is "not found", not a validation error.
    await refused(http, "GET", f"{base}/{SHORT_REFERENCE}-00", token, code=21173)


async def test_auth_operation_reference_is_validated(sim: Any, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    init = await start_token_auth(http, sim.base_url, context_nip=NIP, token=token)
    operation_token = init["authenticationToken"]["token"]
    assert "referenceNumber" in await refused(http, "GET", f"{sim.base_url}/auth/AU-1", operation_token)
    owner = await owner_login(http, sim.base_url, NIP)
    assert "referenceNumber" in await refused(http, "DELETE", f"{sim.base_url}/auth/sessions/AU-1",
                                              owner.access_token)


@pytest.mark.parametrize(("path", "params", "named"), [
    ("/sessions", {"sessionType": "Interactive"}, "sessionType"),
    ("/sessions", {"sessionType": "Online", "statuses": "Open"}, "statuses"),
    ("/sessions", {"sessionType": "Online", "pageSize": "1001"}, "pageSize"),
    ("/sessions", {"sessionType": "Online", "pageSize": "9"}, "pageSize"),
    ("/sessions", {"sessionType": "Online", "dateCreatedFrom": "wczoraj"}, "dateCreatedFrom"),
    ("/sessions", {"sessionType": "Online", "referenceNumber": "SO-1"}, "referenceNumber"),
    ("/tokens", {"pageSize": "101"}, "pageSize"),
    ("/tokens", {"status": "Expired"}, "status"),
    ("/tokens", {"description": "ab"}, "description"),
    ("/tokens", {"authorIdentifier": "52"}, "authorIdentifier"),
    ("/tokens", {"authorIdentifierType": "Regon"}, "authorIdentifierType"),
    ("/auth/sessions", {"pageSize": "5"}, "pageSize"),
    ("/auth/sessions", {"pageSize": "ten"}, "pageSize"),
])
async def test_query_parameters_are_checked_against_the_spec(path: str, params: dict[str, str], named: str,
                                                             sim: Any, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    assert named in await refused(http, "GET", f"{sim.base_url}{path}", owner.access_token, params=params)


async def test_query_parameters_in_range_pass(sim: Any, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    for path, params in (("/sessions", {"sessionType": "Batch", "pageSize": "1000", "statuses": "Failed",
                                        "dateCreatedFrom": "2026-01-01T00:00:00+01:00"}),
                         ("/tokens", {"pageSize": "100", "status": "Active", "authorIdentifierType": "Nip"}),
                         ("/auth/sessions", {"pageSize": "100"})):
        async with http.get(f"{sim.base_url}{path}", params=params, headers=bearer(owner.access_token)) as resp:
            await expect(resp, 200)


async def test_missing_required_query_parameter_is_21405(sim: Any, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    detail = await refused(http, "GET", f"{sim.base_url}/sessions", owner.access_token)
    assert detail.startswith("sessionType")


async def test_verify_certificate_chain_must_be_a_boolean(sim: Any, http: aiohttp.ClientSession) -> None:
    detail = await refused(http, "POST", f"{sim.base_url}/auth/xades-signature", None, data=b"<x/>",
                           params={"verifyCertificateChain": "maybe"}, headers={"Content-Type": "application/xml"})
    assert "verifyCertificateChain" in detail


async def test_authentication_and_permissions_come_before_validation(sim: Any, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.base_url}/sessions/{SHORT_REFERENCE}") as resp:
        assert resp.status == 401
    reader = await access_token(http, sim.base_url, NIP, ["CredentialsRead"])
    async with http.get(f"{sim.base_url}/sessions/{SHORT_REFERENCE}", headers=bearer(reader)) as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 403 and body["reasonCode"] == "missing-permissions"


async def test_problem_details_name_the_parameter(sim: Any, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    async with http.get(f"{sim.base_url}/tokens", params={"pageSize": "0"},
                        headers={**bearer(owner.access_token), "X-Error-Format": "problem-details"}) as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    assert body["errors"][0]["code"] == 21405 and body["errors"][0]["details"][0].startswith("pageSize")


async def test_continuation_token_of_another_listing_is_21418(sim: Any, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    online = Online(http, sim.base_url, owner.access_token)
    for _ in range(11):
        await online.open()
    async with http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online"},
                        headers=bearer(owner.access_token)) as resp:
        sessions_token = (await expect(resp, 200))["continuationToken"]
    for path in ("/tokens", "/auth/sessions", f"/sessions/{online.reference}/invoices"):
        await refused(http, "GET", f"{sim.base_url}{path}", owner.access_token, code=21418,
                      headers={"x-continuation-token": sessions_token})
    await refused(http, "GET", f"{sim.base_url}/sessions", owner.access_token, code=21418,
                  params={"sessionType": "Batch"}, headers={"x-continuation-token": sessions_token})
