"""KSeF certificates in the simulator (PROTOCOL.md §9.3, §15): limits, enrollment data, CSR checks with their
codes, the enrollment's status, retrieve, query, revoke, the TEST validity update, and XAdES login with the
certificates the simulator's CA issues. CSRs are made by the tests' own code (tests/support/csr.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.name import _ASN1Type

from ksefd.sim.clock import ManualClock, iso
from ksefd.sim.config import SimConfig
from tests.support import csr as csrs
from tests.support.ksef_auth import (
    AuthFailed,
    access_token,
    auth_token_request,
    bearer,
    claims,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
    wait_for_auth,
    xades_login,
)
from tests.support.ksef_auth import challenge as ksef_challenge

NIP = "5265877635"
PESEL = "90010112345"


@dataclass
class Login:
    token: str
    cert: x509.Certificate
    key: Any


@pytest.fixture
async def csim(sim_factory: Any, manual_clock: ManualClock) -> Any:
    return await sim_factory(config=SimConfig(limits_profile="off"), clock=manual_clock)


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None,
               params: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers=bearer(token), params=params or {}) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


def codes(body: Any) -> list[int]:
    return [d["exceptionCode"] for d in body["exception"]["exceptionDetailList"]]


async def login(http: aiohttp.ClientSession, base: str, **cert_args: Any) -> Login:
    if cert_args.get("pesel"):
        # The person owns the NIP (PROTOCOL.md §11), so the PESEL certificate may log into its context.
        async with http.post(f"{base}/testdata/person", json={"nip": NIP, "pesel": cert_args["pesel"],
                                                             "isBailiff": False, "description": "Osoba testowa"}):
            pass
    args = {"nip": NIP} | cert_args
    cert, key = self_signed_certificate(**args)
    tokens = await xades_login(http, base, context_nip=args["nip"] or NIP, cert=cert, key=key)
    return Login(tokens.access_token, cert, key)


async def data(http: aiohttp.ClientSession, base: str, token: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{base}/certificates/enrollments/data", token)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def submit(http: aiohttp.ClientSession, base: str, token: str, der: bytes, *, kind: str = "Authentication",
                 name: str = "Certyfikat testowy", valid_from: str | None = None) -> tuple[int, Any]:
    body: dict[str, Any] = {"certificateName": name, "certificateType": kind, "csr": csrs.b64(der)}
    if valid_from:
        body["validFrom"] = valid_from
    return await call(http, "POST", f"{base}/certificates/enrollments", token, body)


async def enrollment(http: aiohttp.ClientSession, base: str, token: str, ref: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{base}/certificates/enrollments/{ref}", token)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def enroll(http: aiohttp.ClientSession, base: str, who: Login, *, key_kind: str = "ec",
                 kind: str = "Authentication", valid_from: str | None = None) -> tuple[x509.Certificate, Any]:
    key = csrs.new_key(key_kind)
    status, body = await submit(http, base, who.token, csrs.csr_der(await data(http, base, who.token), key),
                                kind=kind, valid_from=valid_from)
    assert status == 202, body
    result = await enrollment(http, base, who.token, body["referenceNumber"])
    assert result["status"]["code"] == 200, result
    status, got = await call(http, "POST", f"{base}/certificates/retrieve", who.token,
                             {"certificateSerialNumbers": [result["certificateSerialNumber"]]})
    assert status == 200 and len(got["certificates"]) == 1, got
    cert = x509.load_der_x509_certificate(base64.b64decode(got["certificates"][0]["certificate"]))
    assert f"{cert.serial_number:016X}" == result["certificateSerialNumber"]
    return cert, key


# limits and enrollment data ---------------------------------------------------------------------------------
async def test_limits_per_subject_type(csim: Any, http: aiohttp.ClientSession) -> None:
    nip = await login(http, csim.base_url)
    status, body = await call(http, "GET", f"{csim.base_url}/certificates/limits", nip.token)
    assert status == 200
    assert body == {"canRequest": True, "enrollment": {"limit": 300, "remaining": 300},
                    "certificate": {"limit": 100, "remaining": 100}}
    person = await login(http, csim.base_url, nip=None, pesel=PESEL)
    _, body = await call(http, "GET", f"{csim.base_url}/certificates/limits", person.token)
    assert body["enrollment"]["limit"] == 12 and body["certificate"]["limit"] == 6


async def test_enrollment_data_copies_the_login_certificate_dn(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url, common_name="Zażółć Gęślą")
    assert await data(http, csim.base_url, who.token) == {
        "commonName": "Zażółć Gęślą", "givenName": "Zażółć", "surname": "Gęślą", "serialNumber": f"TINPL-{NIP}",
        "countryName": "PL"}
    seal = await login(http, csim.base_url, nip=None, seal_nip=NIP, common_name="Pieczęć")
    assert await data(http, csim.base_url, seal.token) == {
        "commonName": "Pieczęć", "organizationName": f"Firma {NIP} sp. z o.o.",
        "organizationIdentifier": f"VATPL-{NIP}", "countryName": "PL"}


async def test_token_login_gets_25001_25002_and_no_revoke(csim: Any, http: aiohttp.ClientSession) -> None:
    token = await access_token(http, csim.base_url, NIP, ["CredentialsManage"])
    status, body = await call(http, "GET", f"{csim.base_url}/certificates/enrollments/data", token)
    assert status == 400 and codes(body) == [25001]
    assert body["exception"]["exceptionDetailList"][0]["exceptionDescription"] == (
        "Brak możliwości pobrania danych do CSR dla wykorzystanego sposobu uwierzytelnienia.")
    status, body = await submit(http, csim.base_url, token, csrs.csr_der({"commonName": "x", "countryName": "PL"},
                                                                         csrs.new_key()))
    assert status == 400 and codes(body) == [25002]
    status, body = await call(http, "POST", f"{csim.base_url}/certificates/0123456789ABCDEF/revoke", token, {})
    assert status == 403 and body["reasonCode"] == "auth-method-not-allowed"


# issuing and logging in -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
async def test_authentication_certificate_logs_in(csim: Any, http: aiohttp.ClientSession, key_kind: str) -> None:
    who = await login(http, csim.base_url)
    cert, key = await enroll(http, csim.base_url, who, key_kind=key_kind)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.content_commitment
    assert cert.subject == x509.Name.from_rfc4514_string(who.cert.subject.rfc4514_string())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=730)
    tokens = await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)
    assert claims(tokens.access_token)["subject-value"] == NIP
    _, body = await call(http, "POST", f"{csim.base_url}/certificates/query", tokens.access_token, {})
    item = body["certificates"][0]
    assert item["status"] == "Active" and item["lastUseDate"] and item["subjectIdentifier"] == {
        "type": "Nip", "value": NIP}
    # A KSeF certificate may enroll its own successor (PROTOCOL.md §15): same DN.
    successor, _ = await enroll(http, csim.base_url, Login(tokens.access_token, cert, key))
    assert successor.subject == cert.subject


async def test_offline_certificate_signs_but_cannot_log_in(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    cert, key = await enroll(http, csim.base_url, who, kind="Offline")
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.content_commitment and not usage.digital_signature
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status["code"] == 460 and failed.value.status["details"] == ["Niepoprawny certyfikat"]


async def test_revoked_certificate_is_refused_at_login(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    cert, key = await enroll(http, csim.base_url, who)
    serial = f"{cert.serial_number:016X}"
    status, _ = await call(http, "POST", f"{csim.base_url}/certificates/{serial}/revoke", who.token,
                           {"revocationReason": "KeyCompromise"})
    assert status == 204
    status, body = await call(http, "POST", f"{csim.base_url}/certificates/{serial}/revoke", who.token)
    assert status == 400 and codes(body) == [25009]
    status, body = await call(http, "POST", f"{csim.base_url}/certificates/0123456789ABCDEF/revoke", who.token)
    assert status == 400 and codes(body) == [25008]
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status["details"] == ["Certyfikat odwołany"]
    _, body = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {"status": "Revoked"})
    assert [c["certificateSerialNumber"] for c in body["certificates"]] == [serial]


async def test_shortened_validity_expires_the_certificate(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    cert, key = await enroll(http, csim.base_url, who)
    serial = f"{cert.serial_number:016X}"
    now = csim.clock.now()
    later = iso(now + dt.timedelta(days=1000))
    status, body = await call(http, "PUT", f"{csim.base_url}/testdata/certificates/{serial}", who.token,
                              {"validTo": later})
    assert status == 400 and codes(body) == [21405]
    status, _ = await call(http, "PUT", f"{csim.base_url}/testdata/certificates/{serial}", who.token,
                           {"validTo": iso(now + dt.timedelta(days=3))})
    assert status == 200
    _, body = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token,
                         {"expiresAfter": iso(now + dt.timedelta(days=2))})
    assert [c["certificateSerialNumber"] for c in body["certificates"]] == [serial]
    await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)    # still valid
    csim.clock.advance(4 * 86400)
    who = await login(http, csim.base_url)
    _, body = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {})
    assert body["certificates"][0]["status"] == "Expired"
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status == {"code": 460, "description": failed.value.status["description"],
                                   "details": ["Nieważny certyfikat"]}


async def test_valid_from_in_the_future_and_in_the_past(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    start = csim.clock.now() + dt.timedelta(days=30)
    cert, key = await enroll(http, csim.base_url, who, valid_from=iso(start))
    assert abs(cert.not_valid_before_utc - start) < dt.timedelta(seconds=1)
    with pytest.raises(AuthFailed):
        await xades_login(http, csim.base_url, context_nip=NIP, cert=cert, key=key)   # not valid yet
    status, body = await submit(http, csim.base_url, who.token,
                                csrs.csr_der(await data(http, csim.base_url, who.token), csrs.new_key()),
                                valid_from=iso(csim.clock.now() - dt.timedelta(days=1)))
    assert status == 400 and codes(body) == [21405]


# CSR pitfalls -------------------------------------------------------------------------------------------------------
PITFALLS: dict[str, tuple[int, Any]] = {
    "commonName as PrintableString": (25004, {"types": {"commonName": _ASN1Type.PrintableString}}),
    "serialNumber as UTF8String": (25004, {"types": {"serialNumber": _ASN1Type.UTF8String}}),
    "countryName as UTF8String": (25004, {"types": {"countryName": _ASN1Type.UTF8String}}),
    "no givenName": (25003, {"drop": ("givenName",)}),
    "no surname": (25003, {"drop": ("surname",)}),
    "RSA 1024": (25010, {"key": "rsa1024"}),
    "RSA 3072": (25010, {"key": "rsa3072"}),
    "EC P-384": (25010, {"key": "p384"}),
    "SHA-224": (25011, {"algorithm": hashes.SHA224()}),
}


@pytest.mark.parametrize("pitfall", list(PITFALLS))
async def test_csr_pitfall_is_refused_with_its_code(csim: Any, http: aiohttp.ClientSession, pitfall: str) -> None:
    code, options = PITFALLS[pitfall]
    who = await login(http, csim.base_url)
    options = dict(options)
    key = csrs.new_key(options.pop("key", "ec"))
    der = csrs.csr_der(await data(http, csim.base_url, who.token), key, **options)
    status, body = await submit(http, csim.base_url, who.token, der)
    assert status == 400 and codes(body) == [code], body


async def test_organization_identifier_must_be_utf8(csim: Any, http: aiohttp.ClientSession) -> None:
    seal = await login(http, csim.base_url, nip=None, seal_nip=NIP)
    der = csrs.csr_der(await data(http, csim.base_url, seal.token), csrs.new_key(),
                       types={"organizationIdentifier": _ASN1Type.PrintableString})
    status, body = await submit(http, csim.base_url, seal.token, der)
    assert status == 400 and codes(body) == [25004]


async def test_malformed_csrs_are_25004(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    dn = await data(http, csim.base_url, who.token)
    good_ec = csrs.csr_der(dn, csrs.new_key())
    for der in (csrs.with_null_signature_parameters(good_ec), b"not a CSR",
                csrs.with_bad_signature(csrs.csr_der(dn, csrs.new_key("rsa")))):
        status, body = await submit(http, csim.base_url, who.token, der)
        assert status == 400 and codes(body) == [25004], body
    other = dict(dn, commonName="Ktoś Inny")
    status, body = await submit(http, csim.base_url, who.token, csrs.csr_der(other, csrs.new_key()))
    assert status == 400 and codes(body) == [25003]


async def test_a_public_key_already_certified_is_rejected(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    _, key = await enroll(http, csim.base_url, who)
    dn = await data(http, csim.base_url, who.token)
    for reused in (key, who.key):                   # a KSeF certificate's key, the login certificate's key
        status, body = await submit(http, csim.base_url, who.token, csrs.csr_der(dn, reused))
        assert status == 202, body
        result = await enrollment(http, csim.base_url, who.token, body["referenceNumber"])
        assert result["status"] == {"code": 400, "description": "Wniosek odrzucony",
                                    "details": ["Klucz publiczny został już certyfikowany przez inny podmiot."]}
        assert "certificateSerialNumber" not in result


@pytest.mark.sends_invalid_requests
async def test_certificate_name_rules_and_non_base64_csr(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    der = csrs.csr_der(await data(http, csim.base_url, who.token), csrs.new_key())
    for name in ("abcd", "Certyfikat/1", "x" * 101):
        status, body = await submit(http, csim.base_url, who.token, der, name=name)
        assert status == 400 and codes(body) == [21405], name
    status, body = await call(http, "POST", f"{csim.base_url}/certificates/enrollments", who.token,
                              {"certificateName": "Certyfikat", "certificateType": "Offline", "csr": "@@@"})
    assert status == 400 and codes(body) == [25004], body
    status, body = await submit(http, csim.base_url, who.token, der, name="Łódź żółw-1_ 2")
    assert status == 202


# limits, outcomes, statuses ---------------------------------------------------------------------------------------
async def test_limits_25006_and_25007(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url, nip=None, pesel=PESEL)
    base = csim.base_url
    status, _ = await call(http, "POST", f"{base}/testdata/limits/subject/certificate", who.token,
                           {"certificate": {"maxCertificates": 1}, "enrollment": {"maxEnrollments": 2}})
    assert status == 200
    _, subject = await call(http, "GET", f"{base}/limits/subject", who.token)
    assert subject == {"enrollment": {"maxEnrollments": 2}, "certificate": {"maxCertificates": 1}}
    await enroll(http, base, who)
    _, limits = await call(http, "GET", f"{base}/certificates/limits", who.token)
    assert limits == {"canRequest": False, "enrollment": {"limit": 2, "remaining": 1},
                      "certificate": {"limit": 1, "remaining": 0}}
    dn = await data(http, base, who.token)
    status, body = await submit(http, base, who.token, csrs.csr_der(dn, csrs.new_key()))
    assert status == 400 and codes(body) == [25007]
    await call(http, "POST", f"{base}/testdata/limits/subject/certificate", who.token,
               {"certificate": {"maxCertificates": 5}, "enrollment": {"maxEnrollments": 1}})
    status, body = await submit(http, base, who.token, csrs.csr_der(dn, csrs.new_key()))
    assert status == 400 and codes(body) == [25006]
    status, _ = await call(http, "DELETE", f"{base}/testdata/limits/subject/certificate", who.token)
    _, limits = await call(http, "GET", f"{base}/certificates/limits", who.token)
    assert limits["enrollment"] == {"limit": 12, "remaining": 11}


async def test_status_100_then_forced_550_and_unknown_reference(sim_factory: Any, manual_clock: ManualClock,
                                                                http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", certificate_enrollment_delay_s=30),
                            clock=manual_clock)
    who = await login(http, sim.base_url)
    dn = await data(http, sim.base_url, who.token)
    async with http.post(f"{sim.root_url}/sim/certificates/outcomes", json={"next": [550]}) as resp:
        assert resp.status == 200
    _, first = await submit(http, sim.base_url, who.token, csrs.csr_der(dn, csrs.new_key()))
    _, second = await submit(http, sim.base_url, who.token, csrs.csr_der(dn, csrs.new_key()))
    assert (await enrollment(http, sim.base_url, who.token, first["referenceNumber"]))["status"]["code"] == 100
    manual_clock.advance(31)
    assert (await enrollment(http, sim.base_url, who.token, first["referenceNumber"]))["status"]["code"] == 550
    assert (await enrollment(http, sim.base_url, who.token, second["referenceNumber"]))["status"]["code"] == 200
    status, body = await call(http, "GET", f"{sim.base_url}/certificates/enrollments/20250101-EH-0000000000-"
                                           "0000000000-00", who.token)
    assert status == 400 and codes(body) == [25005]
    manual_clock.advance(31 * 86400)
    who = await login(http, sim.base_url)
    status, body = await call(http, "GET", f"{sim.base_url}/certificates/enrollments/{first['referenceNumber']}",
                              who.token)
    assert status == 410


async def test_query_pages_and_filters(csim: Any, http: aiohttp.ClientSession) -> None:
    who = await login(http, csim.base_url)
    serials = []
    for index in range(11):
        csim.clock.advance(1)
        cert, _ = await enroll(http, csim.base_url, who, kind="Offline" if index % 2 else "Authentication")
        serials.append(f"{cert.serial_number:016X}")
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {},
                         params={"pageSize": "10"})
    assert page["hasMore"] is True
    assert [c["certificateSerialNumber"] for c in page["certificates"]] == serials[::-1][:10]
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {},
                         params={"pageSize": "10", "pageOffset": "1"})
    assert [c["certificateSerialNumber"] for c in page["certificates"]] == [serials[0]] and not page["hasMore"]
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {"type": "Offline"})
    assert len(page["certificates"]) == 5
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token,
                         {"certificateSerialNumber": serials[3]})
    assert [c["certificateSerialNumber"] for c in page["certificates"]] == [serials[3]]
    other = await login(http, csim.base_url, nip="7762811692")
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", other.token, {})
    assert page["certificates"] == []
    _, got = await call(http, "POST", f"{csim.base_url}/certificates/retrieve", other.token,
                        {"certificateSerialNumbers": serials[:2]})
    assert got == {"certificates": []}


async def test_enrollment_is_processed_without_being_polled(csim: Any, http: aiohttp.ClientSession) -> None:
    """KSeF issues the certificate whether or not the client polls: one that lost the reference finds it by query."""
    who = await login(http, csim.base_url)
    status, _ = await submit(http, csim.base_url, who.token,
                             csrs.csr_der(await data(http, csim.base_url, who.token), csrs.new_key()),
                             name="Zgubiona odpowiedź")
    assert status == 202
    _, page = await call(http, "POST", f"{csim.base_url}/certificates/query", who.token, {"name": "Zgubiona"})
    assert [c["name"] for c in page["certificates"]] == ["Zgubiona odpowiedź"]


@pytest.mark.sends_invalid_requests
async def test_unreadable_body_is_21001(csim: Any, http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md §15: 21001 "Nieczytelna treść" for a body that is not JSON, on enrollment among others."""
    who = await login(http, csim.base_url)
    for path in ("certificates/enrollments", "certificates/retrieve", "certificates/query"):
        async with http.post(f"{csim.base_url}/{path}", data=b"{nie json", headers={
                **bearer(who.token), "Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and codes(await resp.json()) == [21001], path


async def test_ksef_certificate_chain_is_trusted(csim: Any, http: aiohttp.ClientSession) -> None:
    """verifyCertificateChain=true refuses a self-signed certificate but not one KSeF issued (its own CA)."""
    who = await login(http, csim.base_url)
    cert, key = await enroll(http, csim.base_url, who)
    found = await ksef_challenge(http, csim.base_url)
    signed = sign_auth_request(auth_token_request(found["challenge"], context_value=NIP), cert, key)
    init = await submit_xades(http, csim.base_url, signed, verify_chain=True)
    status = await wait_for_auth(http, csim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 200
    _, body = await call(http, "GET", f"{csim.base_url}/auth/{init['referenceNumber']}",
                         init["authenticationToken"]["token"])
    assert body["authenticationMethodInfo"]["displayName"] == "Certyfikat KSeF"


async def test_certificates_survive_a_restart_with_state(sim_factory: Any, manual_clock: ManualClock,
                                                         http: aiohttp.ClientSession, tmp_path: Any) -> None:
    config = SimConfig(limits_profile="off", state_path=tmp_path / "sim.sqlite3")
    first = await sim_factory(config=config, clock=manual_clock)
    cert, key = await enroll(http, first.base_url, await login(http, first.base_url))
    await first.server.close()
    second = await sim_factory(config=config, clock=manual_clock)
    tokens = await xades_login(http, second.base_url, context_nip=NIP, cert=cert, key=key)   # same CA, same record
    _, body = await call(http, "POST", f"{second.base_url}/certificates/query", tokens.access_token, {})
    assert [c["certificateSerialNumber"] for c in body["certificates"]] == [f"{cert.serial_number:016X}"]
