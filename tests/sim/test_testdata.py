"""TEST helpers (PROTOCOL.md §11): persons, subjects, permission grants, attachment consent and context
blocking, observed through authentication over HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES
from tests.support.ksef_auth import (
    AuthFailed,
    access_token,
    auth_token_request,
    challenge,
    claims,
    create_ksef_token,
    owner_login,
    redeem,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
    token_login,
    wait_for_auth,
    xades_login,
)
from tests.support.online_flow import Online

NIP = "5265877635"
OTHER_NIP = "7762811692"
PESEL = "15062788702"


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None) if resp.content_length else None


async def test_person_twice_is_30001_until_removed(sim, http: aiohttp.ClientSession) -> None:
    person = {"nip": NIP, "pesel": PESEL, "isBailiff": False, "description": "JDG testowa"}
    assert (await post(http, f"{sim.base_url}/testdata/person", person))[0] == 200
    status, body = await post(http, f"{sim.base_url}/testdata/person", person)
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 30001
    assert (await post(http, f"{sim.base_url}/testdata/person/remove", {"nip": NIP}))[0] == 200
    assert (await post(http, f"{sim.base_url}/testdata/person", person))[0] == 200


async def test_person_without_bailiff_has_no_enforcement(sim, http: aiohttp.ClientSession) -> None:
    person = {"nip": NIP, "pesel": PESEL, "isBailiff": False, "description": "JDG testowa"}
    await post(http, f"{sim.base_url}/testdata/person", person)
    cert, key = self_signed_certificate(pesel=PESEL)
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert sorted(claims(tokens.access_token)["permissions"]) == [
        "CredentialsManage", "CredentialsRead", "Introspection", "InvoiceRead", "InvoiceWrite", "SubunitManage"]


async def test_subject_twice_is_30001(sim, http: aiohttp.ClientSession) -> None:
    subject = {"subjectNip": NIP, "subjectType": "EnforcementAuthority", "description": "Organ egzekucyjny"}
    assert (await post(http, f"{sim.base_url}/testdata/subject", subject))[0] == 200
    status, body = await post(http, f"{sim.base_url}/testdata/subject", subject)
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 30001
    tokens = await owner_login(http, sim.base_url, NIP)
    assert "EnforcementOperations" in claims(tokens.access_token)["permissions"]
    assert (await post(http, f"{sim.base_url}/testdata/subject/remove", {"subjectNip": NIP}))[0] == 200
    assert (await post(http, f"{sim.base_url}/testdata/subject", subject))[0] == 200


@pytest.mark.sends_invalid_requests
async def test_subject_of_unknown_type_is_21405(sim, http: aiohttp.ClientSession) -> None:
    subject = {"subjectNip": NIP, "subjectType": "Bank", "description": "Nieznany typ"}
    status, body = await post(http, f"{sim.base_url}/testdata/subject", subject)
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21405
    assert "subjectType" in body["exception"]["exceptionDetailList"][0]["details"][0]


async def test_grant_to_nip_then_revoke(sim, http: aiohttp.ClientSession) -> None:
    grant = {"contextIdentifier": {"type": "Nip", "value": NIP},
             "authorizedIdentifier": {"type": "Nip", "value": OTHER_NIP},
             "permissions": [{"permissionType": "InvoiceWrite", "description": "wystawianie faktur"},
                             {"permissionType": "CredentialsManage", "description": "zarządzanie"}]}
    assert (await post(http, f"{sim.base_url}/testdata/permissions", grant))[0] == 200
    cert, key = self_signed_certificate(nip=OTHER_NIP)
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert claims(tokens.access_token)["permissions"] == ["CredentialsManage", "InvoiceWrite"]
    revoke = {k: grant[k] for k in ("contextIdentifier", "authorizedIdentifier")}
    assert (await post(http, f"{sim.base_url}/testdata/permissions/revoke", revoke))[0] == 200
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status["code"] == 415


@pytest.mark.sends_invalid_requests
async def test_grant_with_malformed_identifier_is_21405(sim, http: aiohttp.ClientSession) -> None:
    grant = {"contextIdentifier": {"type": "Nip", "value": NIP},
             "authorizedIdentifier": {"type": "Pesel", "value": "1234567890"},
             "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"}]}
    status, body = await post(http, f"{sim.base_url}/testdata/permissions", grant)
    assert status == 400 and body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21405


async def test_attachment_consent_and_its_revocation(sim, http: aiohttp.ClientSession) -> None:
    """Observed where it matters online (PROTOCOL.md §4.2, §8.4): the technical correction of an offline invoice
    may carry Zalacznik only while attachments are enabled for the seller's NIP."""
    seller = "9999999999"                                   # the sample's Podmiot1
    original = (SAMPLES / "invoices" / "FA_3_Przyklad_24.xml").read_bytes()
    assert (await post(http, f"{sim.base_url}/testdata/attachment", {"nip": seller}))[0] == 200
    assert (await post(http, f"{sim.base_url}/testdata/attachment/revoke",
                       {"nip": seller, "expectedEndDate": "2026-12-31"}))[0] == 200
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, seller))
    await online.open()
    first = await online.submit(original, offlineMode=True)
    assert first["status"]["code"] == 415                    # no attachments online outside a correction
    fixed = original.replace(b"</Faktura>", b"\n</Faktura>")
    revoked = await online.submit(fixed, offlineMode=True, hashOfCorrectedInvoice=first["invoiceHash"])
    assert revoked["status"]["code"] == 415                  # consent revoked
    assert (await post(http, f"{sim.base_url}/testdata/attachment", {"nip": seller}))[0] == 200
    again = fixed.replace(b"</Faktura>", b"\n</Faktura>")
    accepted = await online.submit(again, offlineMode=True, hashOfCorrectedInvoice=first["invoiceHash"])
    assert accepted["status"]["code"] == 200, accepted


async def test_blocked_context_fails_token_auth_with_480(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    context = {"contextIdentifier": {"type": "Nip", "value": NIP}}
    assert (await post(http, f"{sim.base_url}/testdata/context/block", context))[0] == 200
    with pytest.raises(AuthFailed) as failed:
        await token_login(http, sim.base_url, context_nip=NIP, token=token)
    assert failed.value.status["code"] == 480
    assert (await post(http, f"{sim.base_url}/testdata/context/unblock", context))[0] == 200
    assert (await token_login(http, sim.base_url, context_nip=NIP, token=token)).access_token


async def test_internal_id_context_and_its_tokens(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    xml = auth_token_request(found["challenge"], context_type="InternalId", context_value=f"{NIP}-12345")
    init = await submit_xades(http, sim.base_url, sign_auth_request(xml, cert, key))
    ref, op_token = init["referenceNumber"], init["authenticationToken"]["token"]
    assert (await wait_for_auth(http, sim.base_url, ref, op_token))["code"] == 200
    tokens = await redeem(http, sim.base_url, ref, op_token)
    async with http.post(f"{sim.base_url}/tokens", json={"permissions": ["InvoiceRead"], "description": "jednostka"},
                         headers={"Authorization": f"Bearer {tokens.access_token}"}) as resp:
        created = await resp.json()
    assert created["token"].split("|")[1] == f"internalId-{NIP}-12345"


async def test_state_survives_a_restart(sim_factory, tmp_path, http: aiohttp.ClientSession) -> None:
    config = SimConfig(state_path=tmp_path / "sim.sqlite")
    first = await sim_factory(config=config)
    token = await create_ksef_token(http, first.base_url, NIP, ["InvoiceRead"])
    tokens = await token_login(http, first.base_url, context_nip=NIP, token=token)
    await first.server.close()
    second = await sim_factory(config=SimConfig(state_path=tmp_path / "sim.sqlite"))
    async with http.post(f"{second.base_url}/auth/token/refresh",
                         headers={"Authorization": f"Bearer {tokens.refresh_token}"}) as resp:
        assert resp.status == 200
    assert (await token_login(http, second.base_url, context_nip=NIP, token=token)).access_token
