"""Asynchronous invoice verdicts over HTTP (PROTOCOL.md §4.2, §8.2-8.4, §14.3): mutated copies of an
official sample are rejected with the documented status codes, and the Offline marking rules hold."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect_error, sim_config
from tests.support.session_crypto import aes_encrypt_raw, b64, sha256_b64

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
WITH_ATTACHMENT = (SAMPLES / "invoices" / "FA_3_Przyklad_24.xml").read_bytes()
NIP = "9999999999"
TODAY = dt.datetime.now(ZoneInfo("Europe/Warsaw")).date()


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """This module's simulator: default settings, rate limits off (see online_flow.sim_config)."""
    return await sim_factory(config=sim_config())


def variant(number: str, *, p1: dt.date | None = None, data: bytes = SAMPLE) -> bytes:
    """The sample with its own P_2 (so it is no duplicate) and optionally another P_1."""
    data = data.replace(b"<P_2>FM2026/02/150</P_2>", f"<P_2>{number}</P_2>".encode())
    if p1 is not None:
        data = data.replace(b"<P_1>2026-02-27</P_1>", f"<P_1>{p1.isoformat()}</P_1>".encode())
    return data


DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
MUTATIONS: dict[str, tuple[bytes, int, str]] = {
    "bom": (b"\xef\xbb\xbf" + SAMPLE, 430, "BOM"),
    "windows-1250-declaration": (SAMPLE.replace(DECLARATION, b'<?xml version="1.0" encoding="windows-1250"?>'),
                                 430, "windows-1250"),
    "windows-1250-bytes": (SAMPLE.decode().encode("cp1250"), 430, "UTF-8"),
    "processing-instruction": (SAMPLE.replace(DECLARATION, DECLARATION + b'\n<?xml-stylesheet href="a.xsl"?>'),
                               430, "instrukcj"),
    "discouraged-character": (SAMPLE.replace(b"Komis ABC", "Komis\u0080ABC".encode()), 430, "U+0080"),
    "over-1-MB": (SAMPLE.replace(b"</Faktura>", b"<!--" + b"x" * 1_000_000 + b"--></Faktura>"), 430, "1000000"),
    "xsd-break": (SAMPLE.replace(b"<RodzajFaktury>VAT</RodzajFaktury>", b"<RodzajFaktury>XYZ</RodzajFaktury>"),
                  430, "RodzajFaktury"),
    "not-well-formed": (SAMPLE[:-40], 430, "XML"),
    "xml-1.1": (SAMPLE.replace(DECLARATION, b'<?xml version="1.1" encoding="UTF-8"?>'), 430, "XML 1.0"),
    "doctype": (SAMPLE.replace(DECLARATION, DECLARATION + b"\n<!DOCTYPE Faktura>"), 430, "DTD"),
    "p1-in-the-future": (variant("FUT/1", p1=TODAY + dt.timedelta(days=1)), 450, "P_1"),
    "wrong-seller-nip": (SAMPLE.replace(b"<NIP>9999999999</NIP>", b"<NIP>5265877635</NIP>"), 410, "5265877635"),
    "attachment-online": (WITH_ATTACHMENT, 415, "wsadowej"),
}
DESCRIPTIONS = {410: "Nieprawidłowy zakres uprawnień", 415: "Brak możliwości wysyłania faktury z załącznikiem",
                430: "Błąd weryfikacji pliku faktury", 435: "Błąd odszyfrowania pliku",
                450: "Błąd weryfikacji semantyki dokumentu faktury"}


@pytest.fixture
async def online(sim: Any, http: aiohttp.ClientSession) -> Online:
    session = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await session.open()
    return session


@pytest.mark.parametrize("name", list(MUTATIONS))
async def test_mutated_sample_is_rejected(name: str, online: Online) -> None:
    data, code, hint = MUTATIONS[name]
    result = await online.submit(data)
    assert result["status"]["code"] == code, result
    assert result["status"]["description"] == DESCRIPTIONS[code]
    assert any(hint in d for d in result["status"]["details"]), result["status"]
    assert "ksefNumber" not in result and "upoDownloadUrl" not in result
    assert result["invoiceHash"] == sha256_b64(data)


async def test_the_unmutated_sample_is_accepted(online: Online) -> None:
    assert (await online.submit(SAMPLE))["status"]["code"] == 200


async def test_bad_padding_is_status_435(online: Online) -> None:
    encrypted = aes_encrypt_raw(online.keys.key, online.keys.iv, os.urandom(64))   # no PKCS#7 padding
    body = online.keys.send_body(SAMPLE, encryptedInvoiceContent=b64(encrypted), encryptedInvoiceSize=len(encrypted),
                                 encryptedInvoiceHash=sha256_b64(encrypted))
    async with online.send_raw(body) as resp:
        assert resp.status == 202, await resp.text()
        reference = (await resp.json())["referenceNumber"]
    result = await online.wait_invoice(reference)
    assert result["status"]["code"] == 435 and result["status"]["description"] == DESCRIPTIONS[435]
    assert result["invoiceHash"] == sha256_b64(SAMPLE)       # as declared: nothing could be decrypted


async def test_offline_marking(online: Online) -> None:
    today = await online.submit(variant("MODE/1", p1=TODAY))
    assert today["status"]["code"] == 200 and today["invoicingMode"] == "Online"
    flagged = await online.submit(variant("MODE/2", p1=TODAY), offlineMode=True)
    assert flagged["status"]["code"] == 200 and flagged["invoicingMode"] == "Offline"
    yesterday = await online.submit(variant("MODE/3", p1=TODAY - dt.timedelta(days=1)))
    assert yesterday["status"]["code"] == 200 and yesterday["invoicingMode"] == "Offline"   # §8.3


async def test_offline_marking_follows_the_warsaw_day(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md §8.3, §13.9: the invoicing day is the Warsaw day. At 23:30 UTC it is already tomorrow in
    Warsaw, so P_1 = the UTC date is a day earlier (Offline) and P_1 = the Warsaw date is not in the future."""
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    clock = ManualClock(dt.datetime.combine(tomorrow, dt.time(23, 30), dt.UTC))
    sim = await sim_factory(config=sim_config(), clock=clock)
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()
    utc_day, warsaw_day = tomorrow, tomorrow + dt.timedelta(days=1)
    earlier = await online.submit(variant("WAW/1", p1=utc_day))
    assert earlier["status"]["code"] == 200 and earlier["invoicingMode"] == "Offline"
    same_day = await online.submit(variant("WAW/2", p1=warsaw_day))
    assert same_day["status"]["code"] == 200 and same_day["invoicingMode"] == "Online"
    assert same_day["ksefNumber"][11:19] == warsaw_day.strftime("%Y%m%d")    # the KSeF number's date, too
    future = await online.submit(variant("WAW/3", p1=warsaw_day + dt.timedelta(days=1)))
    assert future["status"]["code"] == 450


async def test_duplicates_are_global_across_sessions(online: Online) -> None:
    first = await online.submit(variant("DUP/1"))
    first_session = online.reference
    await online.close()
    await online.open()
    again = await online.submit(variant("DUP/1").replace(b"Komis ABC", b"Komis XYZ"))   # other bytes, same key
    assert again["status"]["code"] == 440
    assert again["status"]["extensions"] == {"originalKsefNumber": first["ksefNumber"],
                                             "originalSessionReferenceNumber": first_session}
    other_kind = await online.submit(variant("DUP/1").replace(b"<RodzajFaktury>VAT</RodzajFaktury>",
                                                              b"<RodzajFaktury>ZAL</RodzajFaktury>"))
    assert other_kind["status"]["code"] == 200            # RodzajFaktury is part of the key


async def test_subject_identifier_validation_checks_nip_checksums(online: Online) -> None:
    bad_buyer = variant("NIPCHK/1").replace(b"<NIP>1111111111</NIP>", b"<NIP>1234567890</NIP>")
    assert (await online.submit(bad_buyer))["status"]["code"] == 200    # TEST skips the checksum by default
    await online.open(headers={"X-KSeF-Feature": "subject-identifier-validation"})
    result = await online.submit(bad_buyer.replace(b"NIPCHK/1", b"NIPCHK/2"))
    assert result["status"]["code"] == 450 and "1234567890" in result["status"]["details"][0]
    assert (await online.submit(variant("NIPCHK/3")))["status"]["code"] == 200


async def test_technical_correction_rules(sim: Any, online: Online, http: aiohttp.ClientSession) -> None:
    broken = variant("TECH/1").replace(b"<P_1M>Warszawa</P_1M>", b"<P_1M></P_1M>")   # XSD: empty token
    original = await online.submit(broken, offlineMode=True)
    assert original["status"]["code"] == 430 and original["invoicingMode"] == "Offline"
    fixed = variant("TECH/1")
    async with online.send_raw(online.keys.send_body(fixed, hashOfCorrectedInvoice=sha256_b64(broken))) as resp:
        await expect_error(resp, 21405)       # a correction must declare offlineMode=true (§8.4)
    corrected = await online.submit(fixed, offlineMode=True, hashOfCorrectedInvoice=sha256_b64(broken))
    assert corrected["status"]["code"] == 200, corrected
    again = online.keys.send_body(fixed.replace(b"Komis ABC", b"Komis  ABC"), offlineMode=True,
                                  hashOfCorrectedInvoice=sha256_b64(broken))
    async with online.send_raw(again) as resp:
        await expect_error(resp, 21166)       # a valid correction already exists
    accepted = variant("TECH/2")
    assert (await online.submit(accepted, offlineMode=True))["status"]["code"] == 200
    async with online.send_raw(online.keys.send_body(variant("TECH/2b"), offlineMode=True,
                                                     hashOfCorrectedInvoice=sha256_b64(accepted))) as resp:
        await expect_error(resp, 21167)       # the original was accepted
    online_rejected = variant("TECH/3").replace(b"<P_1M>Warszawa</P_1M>", b"<P_1M></P_1M>")
    rejected = await online.submit(online_rejected.replace(b"<P_1>2026-02-27</P_1>",
                                                           f"<P_1>{TODAY.isoformat()}</P_1>".encode()))
    assert rejected["status"]["code"] == 430 and rejected["invoicingMode"] == "Online"
    async with online.send_raw(online.keys.send_body(variant("TECH/3"), offlineMode=True,
                                                     hashOfCorrectedInvoice=rejected["invoiceHash"])) as resp:
        await expect_error(resp, 21167)       # only offline invoices can be corrected technically


async def test_attachment_allowed_only_for_a_technical_correction_with_consent(
        sim: Any, online: Online, http: aiohttp.ClientSession) -> None:
    first = await online.submit(WITH_ATTACHMENT, offlineMode=True)
    assert first["status"]["code"] == 415
    resent = WITH_ATTACHMENT.replace(b"</Faktura>", b"\n</Faktura>")
    refused = await online.submit(resent, offlineMode=True, hashOfCorrectedInvoice=first["invoiceHash"])
    assert refused["status"]["code"] == 415           # attachments not enabled for the NIP
    async with http.post(f"{sim.base_url}/testdata/attachment", json={"nip": NIP}) as resp:
        assert resp.status == 200, await resp.text()
    again = resent.replace(b"</Faktura>", b"\n</Faktura>")
    accepted = await online.submit(again, offlineMode=True, hashOfCorrectedInvoice=first["invoiceHash"])
    assert accepted["status"]["code"] == 200, accepted
    plain = await online.submit(WITH_ATTACHMENT.replace(b"FV2026/02/150", b"FV/ATT/2"))
    assert plain["status"]["code"] == 415             # still no attachments in ordinary online sends


async def test_invoices_with_an_attachment_may_reach_3_mb(online: Online) -> None:
    def padded(size: int) -> bytes:
        data = WITH_ATTACHMENT.replace(b"FV2026/02/150", f"FV/BIG/{size}".encode())
        return data.replace(b"</Faktura>", b"<!--" + b"x" * (size - len(data) - 7) + b"--></Faktura>")

    under = await online.submit(padded(2_999_999))
    assert under["status"]["code"] == 415          # within the 3 MB limit: only the attachment rule applies
    over = await online.submit(padded(3_000_001))
    assert over["status"]["code"] == 430 and "3000000" in over["status"]["details"][0]
