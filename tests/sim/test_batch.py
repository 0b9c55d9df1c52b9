"""Batch sessions over HTTP with our own crypto (issue #3 item 1; PROTOCOL.md §5): open, pre-signed PUT
uploads without a bearer, close, decrypt/join/unpack, every invoice judged on its own."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, split, targz_archive, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import expect, sim_config

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
WARSAW = ZoneInfo("Europe/Warsaw")


def config(**settings: Any) -> Any:
    # Long-lived access tokens: these tests move a ManualClock past the 15-minute default.
    return sim_config(access_token_ttl_s=6 * 3600, **settings)


async def batch_for(sim: Any, http: aiohttp.ClientSession, nip: str = NIP) -> Batch:
    return Batch(http, sim.base_url, await access_token(http, sim.base_url, nip))


async def test_zip_in_two_parts_each_invoice_judged_on_its_own(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    batch = await batch_for(sim, http)
    files = [*invoices(TEMPLATE, 4), ("broken.xml", b"<Faktura>not FA(3)</Faktura>")]
    opened = await batch.submit(zip_archive(files), parts=2)
    assert [u["ordinalNumber"] for u in opened["partUploadRequests"]] == [1, 2]
    assert all(u["method"] == "PUT" and u["headers"] == {"x-ms-blob-type": "BlockBlob"}
               for u in opened["partUploadRequests"])
    assert opened["referenceNumber"][9:11] == "SB"

    final = await batch.wait()
    assert final["status"]["code"] == 200, final
    assert (final["invoiceCount"], final["successfulInvoiceCount"], final["failedInvoiceCount"]) == (5, 4, 1)
    assert "validUntil" not in final and len(final["upo"]["pages"]) == 1
    listed = await batch.invoices()
    assert sorted(i["invoiceFileName"] for i in listed) == sorted(name for name, _ in files)
    assert {i["invoicingDate"] for i in listed} == {final["dateCreated"]}      # §5.7: the opening time
    failed = await batch.invoices(failed=True)
    assert [(i["invoiceFileName"], i["status"]["code"]) for i in failed] == [("broken.xml", 430)]
    assert all(i["ksefNumber"].startswith(NIP) for i in listed if i["status"]["code"] == 200)


async def test_targz_package_statuses_and_offline_mode(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config(processing_delay_s=0.2))
    batch = await batch_for(sim, http)
    files = invoices(TEMPLATE, 3, prefix="T", issue_date=dt.datetime.now(WARSAW).date())
    archive = targz_archive(files)
    encrypted = batch.encrypt(split(archive, 3))
    await batch.open(await batch.open_body(archive, encrypted, "TarGz", offlineMode=True))
    assert (await batch.status())["status"] == {"code": 100, "description": "Sesja wsadowa rozpoczęta"}
    await batch.upload_all(encrypted)
    await batch.close()
    assert (await batch.status())["status"] == {"code": 150, "description": "Trwa przetwarzanie"}
    final = await batch.wait()
    assert (final["status"]["code"], final["successfulInvoiceCount"]) == (200, 3), final
    listed = await batch.invoices()
    assert sorted(i["invoiceFileName"] for i in listed) == [n for n, _ in files]
    assert {i["invoicingMode"] for i in listed} == {"Offline"}      # the session's offlineMode, for each one


async def test_invoicing_date_is_the_opening_time_across_midnight(sim_factory: Any,
                                                                   http: aiohttp.ClientSession) -> None:
    """Opened at 23:50 Warsaw time, closed after midnight: invoices dated the opening day stay Online,
    because a batch's invoicingDate is the session's opening time (PROTOCOL.md §5.7, §8.3)."""
    midnight = dt.datetime.combine(dt.datetime.now(WARSAW).date() + dt.timedelta(days=1), dt.time(), WARSAW)
    clock = ManualClock((midnight - dt.timedelta(minutes=10)).astimezone(dt.UTC))
    sim = await sim_factory(config=config(), clock=clock)
    batch = await batch_for(sim, http)
    opening_day = (midnight - dt.timedelta(minutes=10)).date()
    archive = zip_archive(invoices(TEMPLATE, 2, issue_date=opening_day))
    encrypted = batch.encrypt([archive])
    await batch.open(await batch.open_body(archive, encrypted))
    clock.advance(15 * 60)                                     # 00:05 the next day, inside the 20-minute window
    await batch.upload_all(encrypted)
    await batch.close()
    final = await batch.wait()
    assert final["successfulInvoiceCount"] == 2, final
    listed = await batch.invoices()
    assert {i["invoicingMode"] for i in listed} == {"Online"}
    assert {i["invoicingDate"] for i in listed} == {final["dateCreated"]}


async def test_upload_url_refuses_bearer_bad_signature_missing_header_and_late_uploads(
        sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(), clock=clock)
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 2))
    encrypted = batch.encrypt(split(archive, 2))
    await batch.open(await batch.open_body(archive, encrypted))
    blob = {"x-ms-blob-type": "BlockBlob"}
    status, _ = await batch.put(1, encrypted[0], headers={**blob, **batch.headers})
    assert status == 403                                       # never send the token to storage (§5.5)
    status, text = await batch.put(1, encrypted[0], headers={})
    assert status == 400 and "x-ms-blob-type" in text
    forged = batch.uploads[0]["url"].replace("sig=", "sig=A")
    async with http.put(forged, data=encrypted[0], headers=blob) as resp:
        assert resp.status == 403
    assert (await batch.put(1, encrypted[0]))[0] == 201
    clock.advance(2 * 20 * 60 + 1)                             # the window is 20 min x 2 declared parts
    assert (await batch.put(2, encrypted[1]))[0] == 403


async def test_close_checks_parts_and_the_upload_window(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(), clock=clock)
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 3))
    encrypted = batch.encrypt(split(archive, 2))
    await batch.open(await batch.open_body(archive, encrypted))
    assert (await batch.put(1, encrypted[0]))[0] == 201
    async with batch.close_raw() as resp:
        detail = (await expect(resp, 400))["exception"]["exceptionDetailList"][0]
    assert detail["exceptionCode"] == 21205 and "'2'" in detail["details"][0]
    assert (await batch.put(2, encrypted[1] + b"\0" * 16))[0] == 201
    async with batch.close_raw() as resp:
        detail = (await expect(resp, 400))["exception"]["exceptionDetailList"][0]
    assert detail["exceptionCode"] == 21157 and "'2'" in detail["details"][0]
    assert (await batch.put(2, encrypted[1]))[0] == 201        # a re-upload replaces the part
    clock.advance(2 * 20 * 60)
    async with batch.close_raw() as resp:
        assert (await expect(resp, 400))["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21208
    status = await batch.status()
    assert status["status"]["code"] == 440 and status["status"]["details"] == ["Przekroczono czas wysyłki"]

    async with http.post(f"{sim.base_url}/sessions/batch/20250626-SB-213D593000-4DE10D80A5-E9/close",
                         headers=batch.headers) as resp:
        assert (await expect(resp, 400))["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21173


async def test_window_passing_without_close_cancels_the_session(sim_factory: Any,
                                                                http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(), clock=clock)
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    encrypted = batch.encrypt([archive])
    await batch.open(await batch.open_body(archive, encrypted))
    assert (await batch.status())["status"]["code"] == 100
    clock.advance(20 * 60)
    assert (await batch.status())["status"] == {"code": 440, "description": "Sesja anulowana",
                                                "details": ["Przekroczono czas wysyłki"]}


async def test_second_close_is_21180_and_uploads_end_with_the_close(sim_factory: Any,
                                                                    http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    await batch.submit(archive)
    async with batch.close_raw() as resp:
        assert (await expect(resp, 400))["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21180
    assert (await batch.wait())["status"]["code"] == 200
    status, text = await batch.put(1, batch.encrypt([archive])[0])
    assert status == 403 and "AuthorizationFailure" in text    # inside the window, but the session is closed
