"""After the start of an authentication (PROTOCOL.md §3.4-3.6): status machine, redeem once, refresh,
expiry by the simulator's clock (401), 410 after 7 days, blocked contexts, deceased persons, auth-session
management, and the 403 `missing-permissions` a read-only token gets when it opens a session."""

from __future__ import annotations

import base64
import datetime as dt
import os
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ksefd.sim.config import SimConfig
from tests.support.ksef_auth import (
    AuthFailed,
    access_token,
    auth_token_request,
    bearer,
    challenge,
    claims,
    owner_login,
    redeem,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
    wait_for_auth,
    xades_login,
)

NIP = "5265877635"
PESEL = "15062788702"


def exception_of(body: Any) -> tuple[int, list[str]]:
    item = body["exception"]["exceptionDetailList"][0]
    return item["exceptionCode"], item.get("details") or []


async def start_owner_xades(http: aiohttp.ClientSession, base_url: str, nip: str = NIP) -> dict[str, Any]:
    found = await challenge(http, base_url)
    cert, key = self_signed_certificate(nip=nip)
    return await submit_xades(http, base_url, sign_auth_request(
        auth_token_request(found["challenge"], context_value=nip), cert, key))


async def post(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with http.post(url, headers=bearer(token)) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_redeem_works_exactly_once(sim, http: aiohttp.ClientSession) -> None:
    init = await start_owner_xades(http, sim.base_url)
    ref, token = init["referenceNumber"], init["authenticationToken"]["token"]
    assert (await wait_for_auth(http, sim.base_url, ref, token))["code"] == 200
    await redeem(http, sim.base_url, ref, token)
    status, body = await post(http, f"{sim.base_url}/auth/token/redeem", token)
    assert status == 400
    assert exception_of(body) == (21301, [f"Tokeny dla operacji uwierzytelniania {ref} zostały już pobrane."])
    async with http.get(f"{sim.base_url}/auth/{ref}", headers=bearer(token)) as resp:
        described = await resp.json()
    assert described["isTokenRedeemed"] is True and "refreshTokenValidUntil" in described
    assert described["authenticationMethodInfo"] == {"category": "XadesSignature", "code": "xades.qualified-signature",
                                                     "displayName": "Podpis kwalifikowany"}


async def test_redeem_after_failure_is_21301(sim, http: aiohttp.ClientSession) -> None:
    init = await start_owner_xades(http, sim.base_url)
    async with http.post(f"{sim.base_url}/testdata/context/block",
                         json={"contextIdentifier": {"type": "Nip", "value": NIP}}) as resp:
        assert resp.status == 200
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 480 and status["description"] == "Uwierzytelnienie zablokowane"
    code, body = await post(http, f"{sim.base_url}/auth/token/redeem", init["authenticationToken"]["token"])
    assert code == 400 and exception_of(body) == (21301, ["Status uwierzytelniania (480) nie pozwala na pobranie "
                                                          "tokenów."])
    async with http.post(f"{sim.base_url}/testdata/context/unblock",
                         json={"contextIdentifier": {"type": "Nip", "value": NIP}}) as resp:
        assert resp.status == 200
    await owner_login(http, sim.base_url, NIP)


async def test_unknown_operation_is_21304(sim, http: aiohttp.ClientSession) -> None:
    init = await start_owner_xades(http, sim.base_url)
    async with http.get(f"{sim.base_url}/auth/20250514-AU-2DFC46C000-3AC6D5877F-D4",
                        headers=bearer(init["authenticationToken"]["token"])) as resp:
        body = await resp.json()
    assert resp.status == 400 and exception_of(body)[0] == 21304


@pytest.mark.sends_invalid_requests
async def test_status_needs_the_operation_token(sim, http: aiohttp.ClientSession) -> None:
    first, second = await start_owner_xades(http, sim.base_url), await start_owner_xades(http, sim.base_url)
    async with http.get(f"{sim.base_url}/auth/{first['referenceNumber']}") as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 401 and resp.content_type == "application/problem+json" and body["status"] == 401
    async with http.get(f"{sim.base_url}/auth/{first['referenceNumber']}",
                        headers=bearer(second["authenticationToken"]["token"])) as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 403 and body["reasonCode"] == "insufficient-resource-access"


async def test_access_token_expires_and_refresh_renews_it(sim_factory, manual_clock,
                                                          http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    tokens = await owner_login(http, sim.base_url, NIP)
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(tokens.access_token)) as resp:
        assert resp.status == 200
    manual_clock.advance(901)                  # access token: 15 minutes (SimConfig access_token_ttl_s)
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(tokens.access_token)) as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 401 and resp.content_type == "application/problem+json"
    assert body["title"] == "Unauthorized" and body["detail"] == "Token wygasł."
    for _ in range(2):                          # not rotated: the same refresh token works again
        status, renewed = await post(http, f"{sim.base_url}/auth/token/refresh", tokens.refresh_token)
        assert status == 200
        async with http.get(f"{sim.base_url}/tokens", headers=bearer(renewed["accessToken"]["token"])) as resp:
            assert resp.status == 200
    manual_clock.advance(7 * 24 * 3600)         # refresh token: 7 days
    status, _ = await post(http, f"{sim.base_url}/auth/token/refresh", tokens.refresh_token)
    assert status == 401


async def test_refresh_reflects_current_permissions(sim, http: aiohttp.ClientSession) -> None:
    grant = {"contextIdentifier": {"type": "Nip", "value": NIP},
             "authorizedIdentifier": {"type": "Pesel", "value": PESEL},
             "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"},
                             {"permissionType": "InvoiceWrite", "description": "wystawianie faktur"}]}
    async with http.post(f"{sim.base_url}/testdata/permissions", json=grant) as resp:
        assert resp.status == 200
    cert, key = self_signed_certificate(pesel=PESEL)
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert claims(tokens.access_token)["permissions"] == ["InvoiceRead", "InvoiceWrite"]
    revoke = {k: grant[k] for k in ("contextIdentifier", "authorizedIdentifier")}
    async with http.post(f"{sim.base_url}/testdata/permissions/revoke", json=revoke) as resp:
        assert resp.status == 200
    grant["permissions"] = grant["permissions"][:1]
    async with http.post(f"{sim.base_url}/testdata/permissions", json=grant) as resp:
        assert resp.status == 200
    status, renewed = await post(http, f"{sim.base_url}/auth/token/refresh", tokens.refresh_token)
    assert status == 200 and claims(renewed["accessToken"]["token"])["permissions"] == ["InvoiceRead"]


async def test_status_is_gone_after_seven_days(sim_factory, manual_clock, http: aiohttp.ClientSession) -> None:
    # The operation token normally dies after 45 minutes (401 first); a longer one lets us see the 410.
    sim = await sim_factory(config=SimConfig(authentication_token_ttl_s=8 * 24 * 3600), clock=manual_clock)
    init = await start_owner_xades(http, sim.base_url)
    url, headers = f"{sim.base_url}/auth/{init['referenceNumber']}", bearer(init["authenticationToken"]["token"])
    manual_clock.advance(7 * 24 * 3600 - 1)
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
    manual_clock.advance(2)
    async with http.get(url, headers=headers) as resp:
        body = await resp.json(content_type=None)
    assert resp.status == 410 and resp.content_type == "application/problem+json" and body["title"] == "Gone"


async def test_operation_token_expires_after_45_minutes(sim_factory, manual_clock,
                                                       http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    init = await start_owner_xades(http, sim.base_url)
    manual_clock.advance(2701)
    status, _ = await post(http, f"{sim.base_url}/auth/token/redeem", init["authenticationToken"]["token"])
    assert status == 401


async def test_deceased_person_is_470_and_21308(sim, http: aiohttp.ClientSession) -> None:
    person = {"nip": NIP, "pesel": PESEL, "isBailiff": False, "description": "Osoba zmarła", "isDeceased": True}
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        assert resp.status == 200
    init = await start_owner_xades(http, sim.base_url)
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 470 and status["details"] == ["Próba wykorzystania metod autoryzacyjnych osoby zmarłej"]
    code, body = await post(http, f"{sim.base_url}/auth/token/redeem", init["authenticationToken"]["token"])
    assert code == 400 and exception_of(body)[0] == 21308


async def test_auth_sessions_list_and_revoke(sim, http: aiohttp.ClientSession) -> None:
    first = await owner_login(http, sim.base_url, NIP)
    second = await owner_login(http, sim.base_url, NIP)
    async with http.get(f"{sim.base_url}/auth/sessions", headers=bearer(second.access_token)) as resp:
        listed = await resp.json()
    assert [(i["referenceNumber"], i["isCurrent"]) for i in listed["items"]] == [
        (second.reference_number, True), (first.reference_number, False)]
    async with http.delete(f"{sim.base_url}/auth/sessions/{first.reference_number}",
                           headers=bearer(second.access_token)) as resp:
        assert resp.status == 204
    status, body = await post(http, f"{sim.base_url}/auth/token/refresh", first.refresh_token)
    assert status == 400 and exception_of(body)[0] == 21301
    async with http.delete(f"{sim.base_url}/auth/sessions/current", headers=bearer(second.refresh_token)) as resp:
        assert resp.status == 204
    status, _ = await post(http, f"{sim.base_url}/auth/token/refresh", second.refresh_token)
    assert status == 400
    # PROTOCOL.md §3.6: access tokens already issued live until exp.
    async with http.get(f"{sim.base_url}/auth/sessions", headers=bearer(second.access_token)) as resp:
        assert resp.status == 200 and (await resp.json())["items"] == []


async def test_auth_sessions_paging(sim, http: aiohttp.ClientSession) -> None:
    logins = [await owner_login(http, sim.base_url, NIP) for _ in range(11)]
    headers = bearer(logins[-1].access_token)
    async with http.get(f"{sim.base_url}/auth/sessions", headers=headers, params={"pageSize": "10"}) as resp:
        page = await resp.json()
    assert len(page["items"]) == 10 and page["continuationToken"]
    async with http.get(f"{sim.base_url}/auth/sessions",
                        headers=headers | {"x-continuation-token": page["continuationToken"]}) as resp:
        rest = await resp.json()
    assert [i["referenceNumber"] for i in rest["items"]] == [logins[0].reference_number]
    assert rest.get("continuationToken") is None


async def _symmetric_key_encryption(http: aiohttp.ClientSession, base_url: str) -> dict[str, str]:
    async with http.get(f"{base_url}/security/public-key-certificates") as resp:
        items = await resp.json()
    chosen = next(i for i in items if "SymmetricKeyEncryption" in i["usage"])
    public = x509.load_der_x509_certificate(base64.b64decode(chosen["certificate"])).public_key()
    wrapped = public.encrypt(os.urandom(32), padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                          algorithm=hashes.SHA256(), label=None))
    return {"encryptedSymmetricKey": base64.b64encode(wrapped).decode(),
            "initializationVector": base64.b64encode(os.urandom(16)).decode(), "publicKeyId": chosen["publicKeyId"]}


async def test_read_only_token_cannot_open_a_session(sim, http: aiohttp.ClientSession) -> None:
    token = await access_token(http, sim.base_url, NIP, ["InvoiceRead"])
    body = {"formCode": {"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"},
            "encryption": await _symmetric_key_encryption(http, sim.base_url)}
    async with http.post(f"{sim.base_url}/sessions/online", json=body, headers=bearer(token)) as resp:
        refused = await resp.json(content_type=None)
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    assert refused["reasonCode"] == "missing-permissions"
    assert refused["security"] == {"requiredAnyOfPermissions": ["InvoiceWrite", "PefInvoiceWrite",
                                                                "EnforcementOperations"],
                                   "presentPermissions": ["InvoiceRead"]}


@pytest.mark.parametrize("permissions", [["InvoiceWrite"]])
async def test_write_token_opens_a_session(sim, http: aiohttp.ClientSession, permissions: list[str]) -> None:
    token = await access_token(http, sim.base_url, NIP, permissions)
    body = {"formCode": {"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"},
            "encryption": await _symmetric_key_encryption(http, sim.base_url)}
    async with http.post(f"{sim.base_url}/sessions/online", json=body, headers=bearer(token)) as resp:
        assert resp.status == 201


async def test_no_permission_in_context_is_415(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(nip="7762811692")
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status == {"code": 415, "description": "Uwierzytelnianie zakończone niepowodzeniem",
                                   "details": ["Brak przypisanych uprawnień"]}


async def test_token_validity_dates_follow_the_clock(sim_factory, manual_clock, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    tokens = await owner_login(http, sim.base_url, NIP)
    access_until = dt.datetime.fromisoformat(tokens.access_valid_until[:26] + tokens.access_valid_until[27:])
    refresh_until = dt.datetime.fromisoformat(tokens.refresh_valid_until[:26] + tokens.refresh_valid_until[27:])
    assert abs((access_until - manual_clock.now()).total_seconds() - 900) < 2
    assert abs((refresh_until - manual_clock.now()).total_seconds() - 7 * 24 * 3600) < 2
