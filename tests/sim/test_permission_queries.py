"""POST /permissions/query/personal/grants (openapi.json 2.9.0; PROTOCOL.md §9.2, §15 item 2)."""

from __future__ import annotations

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

NIP = "5265877635"
PESEL = "15062788702"
PERSON_NIP = "9999999999"
QUERY = "/permissions/query/personal/grants"
SCOPES = ["InvoiceRead", "InvoiceWrite", "Introspection", "CredentialsRead", "SubunitManage", "CredentialsManage",
          "EnforcementOperations", "CollectiveIdentifierManage"]     # all a person may be granted here


async def grant(http: aiohttp.ClientSession, base_url: str, scopes: list[str],
                who: dict[str, str] | None = None) -> None:
    body = {"contextIdentifier": {"type": "Nip", "value": NIP},
            "authorizedIdentifier": who or {"type": "Pesel", "value": PESEL},
            "permissions": [{"permissionType": s, "description": f"{s} dla księgowej"} for s in scopes]}
    async with http.post(f"{base_url}/testdata/permissions", json=body) as resp:
        assert resp.status == 200


async def query(http: aiohttp.ClientSession, base_url: str, access: str, body: dict[str, Any] | None = None,
                **params: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base_url}{QUERY}", json={} if body is None else body, params=params,
                         headers=bearer(access)) as resp:
        return resp.status, await resp.json()


async def person_access(http: aiohttp.ClientSession, base_url: str) -> str:
    cert, key = self_signed_certificate(pesel=PESEL)
    return (await xades_login(http, base_url, context_nip=NIP, cert=cert, key=key)).access_token


async def test_a_granted_person_sees_its_grants_and_no_owner_permissions(sim, http: aiohttp.ClientSession) -> None:
    await grant(http, sim.base_url, ["InvoiceRead", "InvoiceWrite"])
    status, body = await query(http, sim.base_url, await person_access(http, sim.base_url))
    assert status == 200
    assert "ownerPermissions" not in body and body["hasMore"] is False
    assert sorted(p["permissionScope"] for p in body["permissions"]) == ["InvoiceRead", "InvoiceWrite"]
    item = body["permissions"][0]
    assert item["contextIdentifier"] == {"type": "Nip", "value": NIP}
    assert item["permissionState"] == "Active" and item["canDelegate"] is False and len(item["id"]) == 36
    assert item["description"].endswith("dla księgowej")


async def test_the_owner_gets_owner_permissions(sim, http: aiohttp.ClientSession) -> None:
    owner = await owner_login(http, sim.base_url, NIP)
    status, body = await query(http, sim.base_url, owner.access_token)
    assert status == 200 and body["permissions"] == []
    assert {"InvoiceRead", "InvoiceWrite", "CredentialsManage"} <= set(body["ownerPermissions"])


async def test_a_token_caller_is_its_author(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    access = (await token_login(http, sim.base_url, context_nip=NIP, token=token)).access_token
    status, body = await query(http, sim.base_url, access)
    assert status == 200 and "InvoiceWrite" in body["ownerPermissions"]   # the token's author owns the NIP


async def test_filters_and_paging(sim, http: aiohttp.ClientSession) -> None:
    await grant(http, sim.base_url, SCOPES)
    access = await person_access(http, sim.base_url)
    _, only_write = await query(http, sim.base_url, access, {"permissionTypes": ["InvoiceWrite"]})
    assert [p["permissionScope"] for p in only_write["permissions"]] == ["InvoiceWrite"]
    _, inactive = await query(http, sim.base_url, access, {"permissionState": "Inactive"})
    assert inactive["permissions"] == []
    _, other = await query(http, sim.base_url, access, {"contextIdentifier": {"type": "Nip", "value": "9999999999"}})
    assert other["permissions"] == []
    _, first = await query(http, sim.base_url, access, pageSize="10", pageOffset="0")
    assert len(first["permissions"]) == 8 and first["hasMore"] is False
    ids = [p["id"] for p in first["permissions"]]
    assert ids == sorted(ids)                     # same startDate: id ascending


async def test_paging_has_more(sim, http: aiohttp.ClientSession) -> None:
    # A TEST person logs in by PESEL and has the NIP too: grants to both identifiers are its own (16 items).
    person = {"nip": PERSON_NIP, "pesel": PESEL, "isBailiff": False, "description": "JDG testowa"}
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        assert resp.status == 200
    await grant(http, sim.base_url, SCOPES)
    await grant(http, sim.base_url, SCOPES, {"type": "Nip", "value": PERSON_NIP})
    access = await person_access(http, sim.base_url)
    _, first = await query(http, sim.base_url, access, pageSize="10", pageOffset="0")
    _, second = await query(http, sim.base_url, access, pageSize="10", pageOffset="1")
    assert len(first["permissions"]) == 10 and first["hasMore"] is True
    assert len(second["permissions"]) == 6 and second["hasMore"] is False
    assert len({p["id"] for p in first["permissions"] + second["permissions"]}) == 16


@pytest.mark.sends_invalid_requests
async def test_a_page_size_out_of_range_is_21405(sim, http: aiohttp.ClientSession) -> None:
    await grant(http, sim.base_url, ["InvoiceRead"])
    access = await person_access(http, sim.base_url)
    status, body = await query(http, sim.base_url, access, pageSize="5")
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21405


@pytest.mark.sends_invalid_requests
async def test_without_a_token_401(sim, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.base_url}{QUERY}", json={}) as resp:
        assert resp.status == 401
