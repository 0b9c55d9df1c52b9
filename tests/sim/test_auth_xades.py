"""POST /auth/xades-signature: what the simulator accepts and how it refuses (PROTOCOL.md §3.3), with
signatures made by the tests' own XAdES code."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES
from tests.support.ksef_auth import (
    DS,
    AuthFailed,
    _b64,
    _c14n,
    _raw_signature,
    auth_token_request,
    challenge,
    claims,
    fingerprint,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
    wait_for_auth,
    xades_login,
)

NIP = "5265877635"
OTHER_NIP = "7762811692"


async def post_xades(http: aiohttp.ClientSession, base_url: str, body: bytes,
                     params: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(f"{base_url}/auth/xades-signature", data=body, params=params or {},
                         headers={"Content-Type": "application/xml"}) as resp:
        return resp.status, await resp.json(content_type=None)


def codes(body: Any) -> list[int]:
    return [d["exceptionCode"] for d in body["exception"]["exceptionDetailList"]]


async def signed_request(http: aiohttp.ClientSession, base_url: str, *, context_nip: str = NIP,
                         **cert_args: Any) -> bytes:
    found = await challenge(http, base_url)
    cert, key = self_signed_certificate(**({"nip": context_nip} | cert_args))
    return sign_auth_request(auth_token_request(found["challenge"], context_value=context_nip), cert, key)


# accepted --------------------------------------------------------------------------------------------------
async def test_ec_p256_signature_is_verified_and_accepted(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(nip=NIP, key_type="ec")
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert claims(tokens.access_token)["subject-value"] == NIP


async def test_seal_identifies_by_vatpl(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(seal_nip=NIP, common_name="Firma Testowa")
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    payload = claims(tokens.access_token)
    assert (payload["subject-type"], payload["subject-value"]) == ("Nip", NIP)
    async with http.get(f"{sim.base_url}/auth/sessions",
                        headers={"Authorization": f"Bearer {tokens.access_token}"}) as resp:
        item = (await resp.json())["items"][0]
    assert item["authenticationMethodInfo"]["code"] == "xades.qualified-seal"
    assert item["authenticationMethod"] == "QualifiedSeal"


async def test_fingerprint_identity_needs_a_grant(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(common_name="Bez identyfikatora")
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key,
                          subject_identifier_type="certificateFingerprint")
    assert failed.value.status == {"code": 415, "description": "Uwierzytelnianie zakończone niepowodzeniem",
                                   "details": ["Brak przypisanych uprawnień"]}
    grant = {"contextIdentifier": {"type": "Nip", "value": NIP},
             "authorizedIdentifier": {"type": "Fingerprint", "value": fingerprint(cert).lower()},
             "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"}]}
    async with http.post(f"{sim.base_url}/testdata/permissions", json=grant) as resp:
        assert resp.status == 200
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key,
                               subject_identifier_type="certificateFingerprint")
    payload = claims(tokens.access_token)
    assert (payload["subject-type"], payload["subject-value"]) == ("Fingerprint", fingerprint(cert))
    assert payload["permissions"] == ["InvoiceRead"]


async def test_certificate_subject_without_identifier_is_21115(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(common_name="Bez identyfikatora")
    status, body = await post_xades(http, sim.base_url, sign_auth_request(
        auth_token_request(found["challenge"], context_value=NIP), cert, key))
    assert status == 400 and codes(body) == [21115]


async def test_complete_certificate_without_usable_identifier_is_21406(sim, http: aiohttp.ClientSession) -> None:
    """[INFER] ksef-api #169: a personal certificate with every required attribute but a serialNumber holding no
    identifier (a 10-digit "PESEL") under certificateSubject is 21406; certificateFingerprint is the way."""
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(pesel="9876543210")
    status, body = await post_xades(http, sim.base_url, sign_auth_request(
        auth_token_request(found["challenge"], context_value=NIP), cert, key))
    assert status == 400 and codes(body) == [21406]
    assert "certificateFingerprint" in body["exception"]["exceptionDetailList"][0]["details"][0]


async def test_person_in_a_peppol_context_is_21117(sim, http: aiohttp.ClientSession) -> None:
    """[INFER] A PeppolId context belongs to a Peppol service provider, never to a natural person."""
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(pesel="15062788702")
    xml = auth_token_request(found["challenge"], context_type="PeppolId", context_value="PPL123456")
    status, body = await post_xades(http, sim.base_url, sign_auth_request(xml, cert, key))
    assert status == 400 and codes(body) == [21117]


async def test_person_by_pesel_is_owner_of_the_linked_nip(sim, http: aiohttp.ClientSession) -> None:
    person = {"nip": OTHER_NIP, "pesel": "15062788702", "isBailiff": True, "description": "Komornik testowy"}
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        assert resp.status == 200
    cert, key = self_signed_certificate(pesel="15062788702")
    tokens = await xades_login(http, sim.base_url, context_nip=OTHER_NIP, cert=cert, key=key)
    payload = claims(tokens.access_token)
    assert (payload["subject-type"], payload["subject-value"]) == ("Pesel", "15062788702")
    assert "InvoiceWrite" in payload["permissions"] and "EnforcementOperations" in payload["permissions"]


async def test_stranger_has_no_permission_in_a_context(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(nip=OTHER_NIP)
    with pytest.raises(AuthFailed) as failed:
        await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert failed.value.status["code"] == 415


async def test_namespace_2_1_is_accepted(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    xml = auth_token_request(found["challenge"], context_value=NIP, namespace="http://ksef.mf.gov.pl/auth/token/2.1")
    init = await submit_xades(http, sim.base_url, sign_auth_request(xml, cert, key))
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 200


# refused synchronously -------------------------------------------------------------------------------------
async def test_unreadable_body_is_21001(sim, http: aiohttp.ClientSession) -> None:
    status, body = await post_xades(http, sim.base_url, b"<AuthTokenRequest><Challenge>")
    assert status == 400 and codes(body) == [21001]


async def test_unsigned_document_is_9102(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    status, body = await post_xades(http, sim.base_url, auth_token_request(found["challenge"], context_value=NIP))
    assert status == 400 and codes(body) == [9102]


async def test_two_signatures_are_9103(sim, http: aiohttp.ClientSession) -> None:
    signed = await signed_request(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    status, body = await post_xades(http, sim.base_url, sign_auth_request(signed, cert, key))
    assert status == 400 and codes(body) == [9103]


async def test_tampered_document_is_9105(sim, http: aiohttp.ClientSession) -> None:
    signed = await signed_request(http, sim.base_url)
    status, body = await post_xades(http, sim.base_url, signed.replace(NIP.encode(), OTHER_NIP.encode(), 1))
    assert status == 400 and codes(body) == [9105]


async def test_tampered_signed_properties_are_9105(sim, http: aiohttp.ClientSession) -> None:
    signed = await signed_request(http, sim.base_url)
    root = etree.fromstring(signed)
    signing_time = root.find(".//{http://uri.etsi.org/01903/v1.3.2#}SigningTime")
    signing_time.text = "2020-01-01T00:00:00Z"
    status, body = await post_xades(http, sim.base_url, etree.tostring(root))
    assert status == 400 and codes(body) == [9105]


async def test_signing_certificate_digest_must_match_keyinfo(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    other, _ = self_signed_certificate(nip=NIP)
    signed = sign_auth_request(auth_token_request(found["challenge"], context_value=NIP), cert, key,
                               properties_certificate=other)
    status, body = await post_xades(http, sim.base_url, signed)
    assert status == 400 and codes(body) == [9105]


async def test_signature_that_does_not_cover_the_document_is_refused(sim, http: aiohttp.ClientSession) -> None:
    """Only the SignedProperties reference left (re-signed properly): the body itself is unsigned."""
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    root = etree.fromstring(sign_auth_request(auth_token_request(found["challenge"], context_value=NIP), cert, key))
    signed_info = root.find(f".//{{{DS}}}SignedInfo")
    signed_info.remove(signed_info.find(f"{{{DS}}}Reference[@URI='']"))
    root.find(f".//{{{DS}}}SignatureValue").text = _b64(_raw_signature(key, _c14n(signed_info)))
    status, body = await post_xades(http, sim.base_url, etree.tostring(root))
    assert status == 400 and codes(body) == [9105]
    assert "AuthTokenRequest" in body["exception"]["exceptionDetailList"][0]["details"][0]


async def test_xsd_invalid_document_is_21401_with_details(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    xml = auth_token_request(found["challenge"], context_value=NIP, subject_identifier_type="certificateName")
    status, body = await post_xades(http, sim.base_url, sign_auth_request(xml, cert, key))
    assert status == 400 and codes(body) == [21401]
    assert "SubjectIdentifierType" in " ".join(body["exception"]["exceptionDetailList"][0]["details"])


async def test_rsa_key_below_2048_is_21115(sim, http: aiohttp.ClientSession) -> None:
    status, body = await post_xades(http, sim.base_url, await signed_request(http, sim.base_url, rsa_bits=1024))
    assert status == 400 and codes(body) == [21115]


async def test_ec_key_below_256_is_21115(sim, http: aiohttp.ClientSession) -> None:
    status, body = await post_xades(http, sim.base_url, await signed_request(
        http, sim.base_url, key_type="ec", ec_curve=ec.SECP192R1()))
    assert status == 400 and codes(body) == [21115]


async def test_unknown_challenge_is_21111(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    body_text = "20250604-CR-461EA5B000-537A6BA15D-D7"
    status, body = await post_xades(http, sim.base_url, sign_auth_request(
        auth_token_request(body_text, context_value=NIP), cert, key))
    assert status == 400 and codes(body) == [21111]


async def test_challenge_is_single_use(sim, http: aiohttp.ClientSession) -> None:
    signed = await signed_request(http, sim.base_url)
    await submit_xades(http, sim.base_url, signed)
    status, body = await post_xades(http, sim.base_url, signed)
    assert status == 400 and codes(body) == [21111]


async def test_challenge_expires_after_ten_minutes(sim_factory, http: aiohttp.ClientSession) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(clock=clock)
    first, second = await signed_request(http, sim.base_url), await signed_request(http, sim.base_url)
    clock.advance(599)
    await submit_xades(http, sim.base_url, first)          # still valid at 9:59
    clock.advance(2)
    status, body = await post_xades(http, sim.base_url, second)
    assert status == 400 and codes(body) == [21111]
    assert "wygasło" in body["exception"]["exceptionDetailList"][0]["details"][0]


# refused through the status --------------------------------------------------------------------------------
async def test_verify_certificate_chain_on_self_signed_is_460(sim, http: aiohttp.ClientSession) -> None:
    init = await submit_xades(http, sim.base_url, await signed_request(http, sim.base_url), verify_chain=True)
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 460 and status["details"] == ["Niezaufany łańcuch certyfikatów"]


async def test_expired_certificate_is_460(sim, http: aiohttp.ClientSession) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    init = await submit_xades(http, sim.base_url, await signed_request(http, sim.base_url, valid_from=start,
                                                                       valid_days=1))
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 460 and status["details"] == ["Nieważny certyfikat"]


async def test_operation_stays_in_progress_until_processed(sim_factory, http: aiohttp.ClientSession) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(auth_processing_delay_s=5), clock=clock)
    init = await submit_xades(http, sim.base_url, await signed_request(http, sim.base_url))
    headers = {"Authorization": f"Bearer {init['authenticationToken']['token']}"}
    async with http.get(f"{sim.base_url}/auth/{init['referenceNumber']}", headers=headers) as resp:
        body = await resp.json()
    assert body["status"] == {"code": 100, "description": "Uwierzytelnianie w toku"}
    assert body["isTokenRedeemed"] is False
    async with http.post(f"{sim.base_url}/auth/token/redeem", headers=headers) as resp:
        refused = await resp.json()
    assert resp.status == 400 and codes(refused) == [21301]
    clock.advance(5)
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 200


async def test_document_digest_is_over_exclusive_c14n(sim, http: aiohttp.ClientSession) -> None:
    """Sanity of our own signer: the URI="" digest equals SHA-256 of the exc-c14n unsigned document."""
    signed = await signed_request(http, sim.base_url)
    root = etree.fromstring(signed)
    digest = root.find(f".//{{{DS}}}Reference[@URI='']/{{{DS}}}DigestValue").text
    signature = root.find(f"{{{DS}}}Signature")
    root.remove(signature)
    assert digest == _b64(hashlib.sha256(_c14n(root)).digest())


# other signature forms (signxml's own XAdES signer, not the official clients' shape) ------------------------
@pytest.mark.parametrize("form", ["enveloping", "enveloped"])
async def test_signxml_xades_forms_are_accepted(sim, http: aiohttp.ClientSession, form: str) -> None:
    from signxml import SignatureConstructionMethod
    from signxml.xades import XAdESSigner

    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)      # signxml 5.2 cannot write an EC KeyValue
    xml = auth_token_request(found["challenge"], context_value=NIP)
    signed = XAdESSigner(method=SignatureConstructionMethod[form]).sign(etree.fromstring(xml), key=key, cert=[cert])
    init = await submit_xades(http, sim.base_url, etree.tostring(signed))
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    assert status["code"] == 200


async def test_detached_signature_is_refused(sim, http: aiohttp.ClientSession) -> None:
    from signxml import SignatureConstructionMethod
    from signxml.xades import XAdESSigner

    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    xml = auth_token_request(found["challenge"], context_value=NIP)
    signed = XAdESSigner(method=SignatureConstructionMethod.detached).sign(etree.fromstring(xml), key=key,
                                                                           cert=[cert])
    status, body = await post_xades(http, sim.base_url, etree.tostring(signed))
    assert status == 400 and codes(body) == [9101]
    assert "detached" in body["exception"]["exceptionDetailList"][0]["details"][0]


async def test_broken_character_encoding_is_21217(sim, http: aiohttp.ClientSession) -> None:
    body = (b'<?xml version="1.0" encoding="utf-8"?><AuthTokenRequest xmlns="http://ksef.mf.gov.pl/auth/token/2.0">'
            b"<Challenge>\xff\xfe</Challenge></AuthTokenRequest>")
    async with http.post(f"{sim.base_url}/auth/xades-signature", data=body,
                         headers={"Content-Type": "application/xml"}) as resp:
        refused = await resp.json()
    assert resp.status == 400 and codes(refused) == [21217]


@pytest.mark.parametrize("sample", sorted(p.name for p in (SAMPLES / "auth").glob("*.xml")))
async def test_official_samples_are_accepted(sim, http: aiohttp.ClientSession, sample: str) -> None:
    """Each official AuthTokenRequest sample, with a fresh challenge, signed (whitespace kept as it is)."""
    found = await challenge(http, sim.base_url)
    xml = (SAMPLES / "auth" / sample).read_bytes().replace(b"20250604-CR-461EA5B000-537A6BA15D-D7",
                                                           found["challenge"].encode())
    cert, key = self_signed_certificate(nip=NIP)
    init = await submit_xades(http, sim.base_url, sign_auth_request(xml, cert, key))
    status = await wait_for_auth(http, sim.base_url, init["referenceNumber"], init["authenticationToken"]["token"])
    # Owner of the Nip and of its InternalId; nobody in the NipVatUe context; the fingerprint has no grant.
    expected = 200 if sample.endswith(("-nip.xml", "-internal-id.xml")) else 415
    assert status["code"] == expected
