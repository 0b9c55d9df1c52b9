"""UPO v4-3 over HTTP (PROTOCOL.md §4.6): per invoice (by reference and by KSeF number) and per
session page, with x-ms-meta-hash, pre-signed links without a bearer, the XAdES signature, and
validity against the UPO XSD once the signature is removed and the TE name suffix replaced."""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml.xades import XAdESVerifier  # type: ignore[attr-defined]

from ksefd.sim import upo as sim_upo
from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES, SHARED
from tests.support import ksef_auth as auth
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, sim_config
from tests.support.session_crypto import sha256_b64

NS = "http://upo.schematy.mf.gov.pl/KSeF/v4-3"
DS = "http://www.w3.org/2000/09/xmldsig#"
XSD = SHARED / "ksef" / "schemas" / "upo" / "upo-v4-3.xsd"
SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
TE_NAME = "Ministerstwo Finansów - środowisko testowe (TE)"


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """This module's simulator: default settings, rate limits off (see online_flow.sim_config)."""
    return await sim_factory(config=sim_config())


def q(name: str) -> str:
    return f"{{{NS}}}{name}"


def xsd_errors(data: bytes) -> list[str]:
    """Validate like PROTOCOL.md §4.6 says: drop ds:Signature, put back the XSD's fixed receiver name."""
    root = etree.fromstring(data)
    for signature in root.findall(f"{{{DS}}}Signature"):
        root.remove(signature)
    name = root.find(q("NazwaPodmiotuPrzyjmujacego"))
    assert name is not None and name.text == TE_NAME
    name.text = "Ministerstwo Finansów"
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    return [] if schema.validate(root) else [str(e) for e in schema.error_log]


def verify_signature(data: bytes) -> None:
    """XAdES enveloped, checked against the certificate it carries (a self-signed 'MF' certificate)."""
    root = etree.fromstring(data)
    der = base64.b64decode(root.findtext(f".//{{{DS}}}X509Certificate") or "")
    cert = x509.load_der_x509_certificate(der)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    XAdESVerifier().verify(data, x509_cert=pem)
    assert "Ministerstwo Finansów" in cert.subject.rfc4514_string()


def variant(number: str, p1: dt.date | None = None) -> bytes:
    data = SAMPLE.replace(b"FM2026/02/150", number.encode())
    return data.replace(b"<P_1>2026-02-27</P_1>", f"<P_1>{p1.isoformat()}</P_1>".encode()) if p1 else data


async def _session_with_two(sim: Any, http: aiohttp.ClientSession, token: str) -> tuple[Online, list[dict[str, Any]]]:
    online = Online(http, sim.base_url, token)
    await online.open()
    today = dt.datetime.now(ZoneInfo("Europe/Warsaw")).date()
    first = await online.submit(variant("UPO/1", today))
    second = await online.submit(variant("UPO/2", today), offlineMode=True)
    rejected = await online.submit(b"<broken/>")
    assert [first["status"]["code"], second["status"]["code"], rejected["status"]["code"]] == [200, 200, 430]
    return online, [first, second]


async def test_invoice_upo(sim_factory: Any, manual_clock: ManualClock, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config(), clock=manual_clock)
    online, (first, second) = await _session_with_two(sim, http, await access_token(http, sim.base_url, NIP))
    by_ref, headers = await online.get_bytes(f"/sessions/{online.reference}/invoices/{first['referenceNumber']}/upo")
    assert headers["Content-Type"].startswith("application/xml")
    assert headers["x-ms-meta-hash"] == sha256_b64(by_ref)
    by_number, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/ksef/{first['ksefNumber']}/upo")
    assert by_number == by_ref                   # one UPO, the same bytes every time
    assert xsd_errors(by_ref) == []
    verify_signature(by_ref)
    root = etree.fromstring(by_ref)
    assert root.tag == q("Potwierdzenie")
    assert root.findtext(q("NazwaPodmiotuPrzyjmujacego")) == TE_NAME
    assert root.findtext(q("NumerReferencyjnySesji")) == online.reference
    assert root.findtext(f"{q('Uwierzytelnienie')}/{q('IdKontekstu')}/{q('Nip')}") == NIP
    token_ref = root.findtext(f"{q('Uwierzytelnienie')}/{q('NumerReferencyjnyTokenaKSeF')}") or ""
    assert re.fullmatch(r"\d{8}-[A-Z]{2}-[0-9A-F]{10}-[0-9A-F]{10}-[0-9A-F]{2}", token_ref)
    assert root.find(q("OpisPotwierdzenia")) is None          # only session UPOs are paged
    assert root.findtext(q("KodFormularza")) == "FA (3)"
    assert root.findtext(q("NazwaStrukturyLogicznej")) == "Schemat_FA(3)_v1-0E.xsd"
    documents = root.findall(q("Dokument"))
    assert len(documents) == 1
    doc = documents[0]
    assert doc.findtext(q("SkrotDokumentu")) == first["invoiceHash"]
    assert doc.findtext(q("NumerKSeFDokumentu")) == first["ksefNumber"]
    assert doc.findtext(q("NumerFaktury")) == "UPO/1"
    assert doc.findtext(q("NipSprzedawcy")) == NIP
    assert doc.findtext(q("TrybWysylki")) == "Online"
    tampered = by_ref.replace(first["invoiceHash"].encode(), sha256_b64(b"other").encode())
    try:
        verify_signature(tampered)
    except Exception:
        pass
    else:
        raise AssertionError("a changed UPO still verifies")
    offline_upo, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{second['referenceNumber']}/upo")
    assert etree.fromstring(offline_upo).findtext(f"{q('Dokument')}/{q('TrybWysylki')}") == "Offline"

    link = (await online.invoice(first["referenceNumber"]))["upoDownloadUrl"]
    async with http.get(link) as resp:          # pre-signed: no bearer
        assert resp.status == 200 and await resp.read() == by_ref
        assert resp.headers["x-ms-meta-hash"] == sha256_b64(by_ref)
    async with http.get(link, headers=online.headers) as resp:
        assert resp.status == 403               # must not carry the access token
    async with http.get(link.replace("sig=", "sig=x")) as resp:
        assert resp.status == 403
    manual_clock.advance(3 * 24 * 3600 + 1)
    async with http.get(link) as resp:
        assert resp.status == 403               # expired


async def test_session_upo(sim: Any, http: aiohttp.ClientSession) -> None:
    online, invoices = await _session_with_two(sim, http, await access_token(http, sim.base_url, NIP))
    await online.close()
    final = await online.wait_session()
    assert final["status"]["code"] == 200 and final["successfulInvoiceCount"] == 2
    (page,) = final["upo"]["pages"]
    data, headers = await online.get_bytes(f"/sessions/{online.reference}/upo/{page['referenceNumber']}")
    assert headers["x-ms-meta-hash"] == sha256_b64(data)
    async with http.get(page["downloadUrl"]) as resp:
        assert resp.status == 200 and await resp.read() == data
    assert xsd_errors(data) == []
    verify_signature(data)
    root = etree.fromstring(data)
    description = root.find(q("OpisPotwierdzenia"))
    assert description is not None
    assert [description.findtext(q(n)) for n in ("Strona", "LiczbaStron", "ZakresDokumentowOd", "ZakresDokumentowDo",
                                                 "CalkowitaLiczbaDokumentow")] == ["1", "1", "1", "2", "2"]
    assert [d.findtext(q("SkrotDokumentu")) for d in root.findall(q("Dokument"))] == \
        [i["invoiceHash"] for i in invoices]
    assert [d.findtext(q("TrybWysylki")) for d in root.findall(q("Dokument"))] == ["Online", "Offline"]


async def test_xades_login_upo_names_the_signed_document(sim: Any, http: aiohttp.ClientSession) -> None:
    found = await auth.challenge(http, sim.base_url)
    cert, key = auth.self_signed_certificate(nip=NIP)
    signed = auth.sign_auth_request(auth.auth_token_request(found["challenge"], context_value=NIP), cert, key)
    init = await auth.submit_xades(http, sim.base_url, signed)
    operation_token = init["authenticationToken"]["token"]
    assert (await auth.wait_for_auth(http, sim.base_url, init["referenceNumber"], operation_token))["code"] == 200
    tokens = await auth.redeem(http, sim.base_url, init["referenceNumber"], operation_token)
    online, (first, _) = await _session_with_two(sim, http, tokens.access_token)
    data, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{first['referenceNumber']}/upo")
    proof = etree.fromstring(data).find(q("Uwierzytelnienie"))
    assert proof is not None and proof.find(q("NumerReferencyjnyTokenaKSeF")) is None
    assert proof.findtext(q("SkrotDokumentuUwierzytelniajacego")) == sha256_b64(signed)   # with its signature
    assert xsd_errors(data) == []


async def test_session_upo_is_paged(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md §4.4: a page lists at most 10 000 invoices; SimConfig.upo_page_size=2 shows the paging over
    HTTP with five accepted invoices (three pages) instead of 10 001."""
    sim = await sim_factory(config=sim_config(upo_page_size=2))
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()
    accepted = [await online.submit(variant(f"UPO/PAGE/{n}")) for n in range(5)]
    assert (await online.submit(b"<broken/>"))["status"]["code"] == 430      # not in any page
    await online.close()
    final = await online.wait_session()
    assert final["status"]["code"] == 200 and len(final["upo"]["pages"]) == 3
    listed: list[str] = []
    for number, page in enumerate(final["upo"]["pages"], start=1):
        data, _ = await online.get_bytes(f"/sessions/{online.reference}/upo/{page['referenceNumber']}")
        async with http.get(page["downloadUrl"]) as resp:
            assert resp.status == 200 and await resp.read() == data
        assert xsd_errors(data) == []
        verify_signature(data)
        root = etree.fromstring(data)
        description = [root.findtext(f"{q('OpisPotwierdzenia')}/{q(n)}") for n in (
            "Strona", "LiczbaStron", "ZakresDokumentowOd", "ZakresDokumentowDo", "CalkowitaLiczbaDokumentow")]
        first = 2 * number - 1
        assert description == [str(number), "3", str(first), str(min(first + 1, 5)), "5"]
        listed += [d.findtext(q("NumerKSeFDokumentu")) or "" for d in root.findall(q("Dokument"))]
    assert listed == [a["ksefNumber"] for a in accepted]          # every accepted invoice once, in order


def test_session_upo_pages_hold_at_most_10000_documents() -> None:
    assert [(p.number, p.count, p.first, p.last) for p in sim_upo.pages(10_000)] == [(1, 1, 1, 10_000)]
    assert [(p.first, p.last, p.total) for p in sim_upo.pages(25_001)] == \
        [(1, 10_000, 25_001), (10_001, 20_000, 25_001), (20_001, 25_001, 25_001)]


async def test_unknown_upo_link_is_refused(sim: Any, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.root_url}/storage/upo/20261122-SO-0000000000-0000000000-00/invoice/x.xml") as resp:
        assert resp.status == 403


async def test_production_name_has_no_suffix(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config(environment="PRD"))
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()
    accepted = await online.submit(variant("UPO/PRD"))
    data, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{accepted['referenceNumber']}/upo")
    root = etree.fromstring(data)
    assert root.findtext(q("NazwaPodmiotuPrzyjmujacego")) == "Ministerstwo Finansów"
    for signature in root.findall(f"{{{DS}}}Signature"):
        root.remove(signature)
    assert etree.XMLSchema(etree.parse(str(XSD))).validate(root)     # valid as it stands on PRD


async def test_an_online_invoice_s_upo_is_signed_when_it_is_accepted_not_at_the_first_download(
        sim: Any, http: aiohttp.ClientSession) -> None:
    """Issue #16: the client asks for the UPO right after the status says 200, and signing it (about a third of
    the simulator's CPU per online invoice) sat on that round trip. The bytes are those a download gives."""
    online, (first, second) = await _session_with_two(sim, http, await access_token(http, sim.base_url, NIP))
    ready = sim.world.store.get_blob(f"upo/invoice/{first['referenceNumber']}")
    assert ready is not None and sim.world.store.get_blob(f"upo/invoice/{second['referenceNumber']}") is not None
    by_ref, _ = await online.get_bytes(f"/sessions/{online.reference}/invoices/{first['referenceNumber']}/upo")
    assert by_ref == ready
    verify_signature(by_ref)
