"""KSeF tokens over HTTP (PROTOCOL.md §9.1): creation, Pending -> Active, listing with filters and
continuation tokens, revocation Revoking -> Revoked, and who may see or revoke what."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from tests.support.ksef_auth import (
    bearer,
    create_ksef_token,
    owner_login,
    self_signed_certificate,
    token_login,
    xades_login,
)
from tests.support.online_flow import sim_config

NIP = "5265877635"
PESEL = "15062788702"


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """Rate limits off: these tests create tokens faster than the PRD limit of `other` (10/s) allows;
    the limits have their own tests (test_ratelimits.py)."""
    return await sim_factory(config=sim_config())


async def create(http: aiohttp.ClientSession, base_url: str, access: str, permissions: list[str],
                 description: str = "token testowy") -> tuple[int, Any]:
    async with http.post(f"{base_url}/tokens", json={"permissions": permissions, "description": description},
                         headers=bearer(access)) as resp:
        return resp.status, await resp.json(content_type=None)


async def status_of(http: aiohttp.ClientSession, base_url: str, access: str, ref: str) -> str:
    async with http.get(f"{base_url}/tokens/{ref}", headers=bearer(access)) as resp:
        assert resp.status == 200
        status: str = (await resp.json())["status"]
        return status


async def test_created_token_is_pending_then_active(sim_factory, manual_clock, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config(), clock=manual_clock)
    owner = await owner_login(http, sim.base_url, NIP)
    status, created = await create(http, sim.base_url, owner.access_token, ["InvoiceRead", "InvoiceWrite"])
    assert status == 202
    ref = created["referenceNumber"]
    assert re.fullmatch(rf"{re.escape(ref)}\|nip-{NIP}\|[0-9a-f]{{64}}", created["token"])
    assert ref[9:11] == "EC"
    assert await status_of(http, sim.base_url, owner.access_token, ref) == "Pending"
    assert await status_of(http, sim.base_url, owner.access_token, ref) == "Active"
    async with http.get(f"{sim.base_url}/tokens/{ref}", headers=bearer(owner.access_token)) as resp:
        item = await resp.json()
    assert item["authorIdentifier"] == {"type": "Nip", "value": NIP}
    assert item["contextIdentifier"] == {"type": "Nip", "value": NIP}
    assert item["requestedPermissions"] == ["InvoiceRead", "InvoiceWrite"]
    assert "lastUseDate" not in item            # never used: left out, as in the spec's example


async def test_token_activates_after_the_delay_without_reads(sim_factory, manual_clock,
                                                             http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    owner = await owner_login(http, sim.base_url, NIP)
    _, created = await create(http, sim.base_url, owner.access_token, ["InvoiceRead"])
    manual_clock.advance(1)
    tokens = await token_login(http, sim.base_url, context_nip=NIP, token=created["token"])
    assert tokens.access_token
    async with http.get(f"{sim.base_url}/tokens/{created['referenceNumber']}",
                        headers=bearer(owner.access_token)) as resp:
        assert (await resp.json())["lastUseDate"] is not None


async def test_cannot_give_a_token_permissions_you_lack(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    status, body = await create(http, sim.base_url, owner.access_token, ["InvoiceRead", "EnforcementOperations"])
    assert status == 400
    detail = body["exception"]["exceptionDetailList"][0]
    assert detail["exceptionCode"] == 26001 and "EnforcementOperations" in detail["details"][0]


@pytest.mark.sends_invalid_requests
async def test_description_too_short_is_21405(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    status, body = await create(http, sim.base_url, owner.access_token, ["InvoiceRead"], description="abc")
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21405


async def test_token_authenticated_caller_cannot_create_tokens(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead", "CredentialsManage"])
    tokens = await token_login(http, sim.base_url, context_nip=NIP, token=token)
    status, body = await create(http, sim.base_url, tokens.access_token, ["InvoiceRead"])
    assert status == 403 and body["reasonCode"] == "auth-method-not-allowed"
    assert body["security"] == {"authenticationMethodCategory": "Token"}


async def test_list_filters_and_paging(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    refs = []
    for index in range(12):
        _, created = await create(http, sim.base_url, owner.access_token, ["InvoiceRead"], f"partia {index:02d}")
        refs.append(created["referenceNumber"])
    _, odd = await create(http, sim.base_url, owner.access_token, ["InvoiceWrite"], "zupełnie inny")
    headers = bearer(owner.access_token)
    async with http.get(f"{sim.base_url}/tokens", headers=headers, params={"description": "PARTIA"}) as resp:
        first = await resp.json()
    assert len(first["tokens"]) == 10 and first["continuationToken"]
    async with http.get(f"{sim.base_url}/tokens", params={"description": "PARTIA"},
                        headers=headers | {"x-continuation-token": first["continuationToken"]}) as resp:
        second = await resp.json()
    seen = [t["referenceNumber"] for t in first["tokens"] + second["tokens"]]
    assert sorted(seen) == sorted(refs) and len(set(seen)) == 12
    assert second.get("continuationToken") is None
    assert [t["description"] for t in first["tokens"]][:2] == ["partia 11", "partia 10"]   # dateCreated desc
    async with http.get(f"{sim.base_url}/tokens", headers=headers,
                        params={"authorIdentifier": NIP[:5], "authorIdentifierType": "Nip", "pageSize": "100"}) as resp:
        assert len((await resp.json())["tokens"]) == 13
    async with http.get(f"{sim.base_url}/tokens", headers=headers, params=[("status", "Revoked")]) as resp:
        assert (await resp.json())["tokens"] == []
    async with http.delete(f"{sim.base_url}/tokens/{odd['referenceNumber']}", headers=headers) as resp:
        assert resp.status == 204
    async with http.get(f"{sim.base_url}/tokens", headers=headers,
                        params=[("status", "Revoking"), ("status", "Revoked")]) as resp:
        assert [t["referenceNumber"] for t in (await resp.json())["tokens"]] == [odd["referenceNumber"]]


@pytest.mark.sends_invalid_requests
async def test_bad_continuation_token_is_21418(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(owner.access_token) | {
            "x-continuation-token": "not a token"}) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21418


async def test_revoked_token_goes_revoking_then_revoked(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    ref = token.split("|")[0]
    async with http.delete(f"{sim.base_url}/tokens/{ref}", headers=bearer(owner.access_token)) as resp:
        assert resp.status == 204
    assert await status_of(http, sim.base_url, owner.access_token, ref) == "Revoking"
    assert await status_of(http, sim.base_url, owner.access_token, ref) == "Revoked"


async def test_token_caller_sees_and_revokes_only_its_own_token(sim, http: aiohttp.ClientSession) -> None:
    mine = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    other = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    tokens = await token_login(http, sim.base_url, context_nip=NIP, token=mine)
    headers = bearer(tokens.access_token)
    async with http.get(f"{sim.base_url}/tokens", headers=headers) as resp:
        assert [t["referenceNumber"] for t in (await resp.json())["tokens"]] == [mine.split("|")[0]]
    async with http.delete(f"{sim.base_url}/tokens/{other.split('|')[0]}", headers=headers) as resp:
        assert resp.status == 403 and (await resp.json(content_type=None))["reasonCode"] == \
            "insufficient-resource-access"
    async with http.delete(f"{sim.base_url}/tokens/{mine.split('|')[0]}", headers=headers) as resp:
        assert resp.status == 204


async def test_person_sees_own_tokens_through_nip_pesel_link(sim, http: aiohttp.ClientSession) -> None:
    """Without CredentialsRead/Manage a person sees the tokens it authored, by NIP or by PESEL."""
    other_nip = "7762811692"
    person = {"nip": other_nip, "pesel": PESEL, "isBailiff": False, "description": "Osoba testowa"}
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        assert resp.status == 200
    grant = {"contextIdentifier": {"type": "Nip", "value": NIP},
             "authorizedIdentifier": {"type": "Nip", "value": other_nip},
             "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"}]}
    async with http.post(f"{sim.base_url}/testdata/permissions", json=grant) as resp:
        assert resp.status == 200
    by_nip, key = self_signed_certificate(nip=other_nip)
    as_nip = await xades_login(http, sim.base_url, context_nip=NIP, cert=by_nip, key=key)
    status, created = await create(http, sim.base_url, as_nip.access_token, ["InvoiceRead"])
    assert status == 202
    owner = await owner_login(http, sim.base_url, NIP)
    await create(http, sim.base_url, owner.access_token, ["InvoiceRead"], "właściciela")
    by_pesel, key = self_signed_certificate(pesel=PESEL)
    as_pesel = await xades_login(http, sim.base_url, context_nip=NIP, cert=by_pesel, key=key)
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(as_pesel.access_token)) as resp:
        assert [t["referenceNumber"] for t in (await resp.json())["tokens"]] == [created["referenceNumber"]]
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(owner.access_token)) as resp:
        assert len((await resp.json())["tokens"]) == 2          # CredentialsManage sees the whole context
