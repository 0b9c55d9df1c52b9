"""Online session happy path over HTTP: open, send, asynchronous processing, close, session UPO
(issue #2 items 4 and 5; PROTOCOL.md §4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import aiohttp

from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect, sim_config

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
NIP = "9999999999"


def crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def parse(text: str) -> dt.datetime:
    head, _, rest = text.partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    if not rest:
        return dt.datetime.fromisoformat(text)
    return dt.datetime.fromisoformat(f"{head}.{digits.ljust(6, '0')}+00:00")


async def test_open_send_process_close(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config(processing_delay_s=0.5))
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    opened = await online.open()
    ref = opened["referenceNumber"]
    assert ref[9:11] == "SO" and int(ref[-2:], 16) == crc8(ref[:33].encode())
    assert parse(opened["validUntil"]) - dt.datetime.now(dt.UTC) > dt.timedelta(hours=11, minutes=59)

    invoice_ref = await online.send(SAMPLE)
    assert invoice_ref[9:11] == "EE" and int(invoice_ref[-2:], 16) == crc8(invoice_ref[:33].encode())
    first = await online.invoice(invoice_ref)
    assert first["status"] == {"code": 100, "description": "Faktura przyjęta do dalszego przetwarzania"}
    assert "ksefNumber" not in first and first["ordinalNumber"] == 1
    seen = [first["status"]["code"]]
    while seen[-1] < 200:                        # asynchronous: 100 -> 150 -> 200 (PROTOCOL.md §12)
        await asyncio.sleep(0.02)
        code = (await online.invoice(invoice_ref))["status"]["code"]
        if code != seen[-1]:
            seen.append(code)
    assert seen == [100, 150, 200]
    done = await online.wait_invoice(invoice_ref)
    assert done["status"]["code"] == 200, done
    number = done["ksefNumber"]
    assert number.startswith(f"{NIP}-") and int(number[-2:], 16) == crc8(number[:32].encode())
    assert parse(done["permanentStorageDate"]) > parse(done["acquisitionDate"]) >= parse(done["invoicingDate"])
    assert done["invoiceNumber"] == "FV2026/02/150"
    assert done["invoicingMode"] == "Offline"     # P_1 2026-02-15 precedes today: automatic offline (§8.3)
    assert done["upoDownloadUrl"].startswith(sim.root_url + "/storage/")
    # Every field of SessionInvoiceStatusResponse but invoiceFileName (batch only): nothing KSeF returns is left out.
    assert set(done) == {"ordinalNumber", "invoiceNumber", "ksefNumber", "referenceNumber", "invoiceHash",
                         "acquisitionDate", "invoicingDate", "permanentStorageDate", "upoDownloadUrl",
                         "upoDownloadUrlExpirationDate", "invoicingMode", "status"}

    await online.close()
    closing = await online.status()
    assert closing["status"]["code"] == 170
    final = await online.wait_session()
    assert final["status"] == {"code": 200, "description": "Sesja interaktywna przetworzona pomyślnie"}
    assert (final["invoiceCount"], final["successfulInvoiceCount"], final["failedInvoiceCount"]) == (1, 1, 0)
    assert len(final["upo"]["pages"]) == 1
    assert set(final) == {"status", "dateCreated", "dateUpdated", "validUntil", "upo", "invoiceCount",
                          "successfulInvoiceCount", "failedInvoiceCount"}          # SessionStatusResponse, complete
    # KSeF's date format (PROTOCOL.md §1): 7 fractional digits and an explicit offset.
    dates = [final[k] for k in ("dateCreated", "dateUpdated", "validUntil")] + [done[k] for k in (
        "acquisitionDate", "invoicingDate", "permanentStorageDate", "upoDownloadUrlExpirationDate")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}\+00:00", d) for d in dates), dates
    async with http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online"},
                        headers=online.headers) as resp:
        listed = await expect(resp, 200)
    assert [s["referenceNumber"] for s in listed["sessions"]] == [ref]


async def test_several_sessions_may_be_open_at_once(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    token = await access_token(http, sim.base_url, NIP)
    first, second = Online(http, sim.base_url, token), Online(http, sim.base_url, token)
    await first.open()
    await second.open()
    assert first.reference != second.reference and first.keys.key != second.keys.key
    a = await second.submit(SAMPLE.replace(b"FV2026/02/150", b"TWO/2"))
    b = await first.submit(SAMPLE.replace(b"FV2026/02/150", b"TWO/1"))
    assert (a["status"]["code"], b["status"]["code"]) == (200, 200)
    assert (a["ordinalNumber"], b["ordinalNumber"]) == (1, 1)      # ordinals count per session
    for online in (first, second):
        await online.close()
        assert (await online.wait_session())["successfulInvoiceCount"] == 1
