"""Exports over HTTP with our own crypto (issue #3 item 2; PROTOCOL.md §6.3, §6.4, §14.4): encrypted
parts downloaded without a bearer, ZIP or tar.gz with {ksefNumber}.xml and _metadata.json, truncation
with the last date to continue from, onlyMetadata, 10 concurrent exports, statuses 210/415/420, 410."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import expect, expect_error, sim_config
from tests.support.receive_flow import Receiver, filters, metadata_of, seed, unpack
from tests.support.session_crypto import sha256_b64

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
SELLER, BUYER = "9999999999", "1111111111"


def config(**settings: Any) -> Any:
    return sim_config(access_token_ttl_s=30 * 24 * 3600, refresh_token_ttl_s=30 * 24 * 3600, **settings)


def an_hour_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)


async def test_zip_export_for_the_buyer(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    start = an_hour_ago()
    sent = await seed(http, sim.base_url, await access_token(http, sim.base_url, SELLER), TEMPLATE, 3)
    buyer = Receiver(http, sim.base_url, await access_token(http, sim.base_url, BUYER, ["InvoiceRead"]))
    reference = await buyer.start(filters("Subject2", start, restrict=False))
    assert reference[9:11] == "EH"
    final = await buyer.wait(reference)
    assert final["status"] == {"code": 200, "description": "Eksport faktur zakończony sukcesem"}
    assert final["completedDate"] < final["packageExpirationDate"]
    package = final["package"]
    assert (package["invoiceCount"], package["isTruncated"], package["compressionType"]) == (3, False, "Zip")
    assert "permanentStorageHwmDate" in package and "lastPermanentStorageDate" not in package
    part = package["parts"][0]
    assert part["partName"] == f"{reference}-001.zip.aes" and part["method"] == "GET"
    async with http.get(part["url"], headers=buyer.headers) as resp:
        assert resp.status == 403                           # never the bearer on a pre-signed URL
    files = await buyer.download(package)
    metadata = metadata_of(files)
    assert set(files) == {f"{m['ksefNumber']}.xml" for m in metadata} | {"_metadata.json"}
    for meta in metadata:
        data = files[f"{meta['ksefNumber']}.xml"]
        assert data == sent[meta["invoiceNumber"]] and meta["invoiceHash"] == sha256_b64(data)
        assert meta["buyer"]["identifier"]["value"] == BUYER


async def test_targz_in_several_parts_and_only_metadata(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config(export_part_size=1000))
    start = an_hour_ago()
    token = await access_token(http, sim.base_url, SELLER)
    sent = await seed(http, sim.base_url, token, TEMPLATE, 4)
    seller = Receiver(http, sim.base_url, token)
    package, files = await seller.export(filters("Subject1", start), compressionType="TarGz")
    assert package["compressionType"] == "TarGz" and len(package["parts"]) > 2
    assert all(p["partSize"] <= 1000 and p["partName"].endswith(".tar.gz.aes") for p in package["parts"])
    assert sorted(files[f"{m['ksefNumber']}.xml"] for m in metadata_of(files)) == sorted(sent.values())

    package, files = await seller.export(filters("Subject1", start), onlyMetadata=True)
    assert list(files) == ["_metadata.json"] and package["invoiceCount"] == 4
    assert {m["invoiceNumber"] for m in metadata_of(files)} == set(sent)


async def test_truncated_export_continues_from_last_permanent_storage_date(sim_factory: Any,
                                                                          http: aiohttp.ClientSession) -> None:
    """The checkpoint rule of PROTOCOL.md §6.4: truncated -> lastPermanentStorageDate, else the HWM."""
    clock = ManualClock()
    sim = await sim_factory(config=config(query_cap=5, hwm_lag_s=2), clock=clock)
    start = clock.now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    sent = await seed(http, sim.base_url, token, TEMPLATE, 12)
    clock.advance(3)                                         # all of them behind the HWM
    seller = Receiver(http, sim.base_url, token)
    received: dict[str, bytes] = {}
    checkpoint, rounds = start.isoformat(), 0
    while True:
        rounds += 1
        package, files = await seller.export(filters("Subject1", checkpoint, restrict=True))
        received |= {m["invoiceNumber"]: files[f"{m['ksefNumber']}.xml"] for m in metadata_of(files)}
        if not package["isTruncated"]:
            checkpoint = package["permanentStorageHwmDate"]
            break
        assert package["invoiceCount"] == 5 and "lastPermanentStorageDate" in package
        assert package["lastPermanentStorageDate"] == metadata_of(files)[-1]["permanentStorageDate"]
        checkpoint = package["lastPermanentStorageDate"]
    assert received == sent and rounds == 3                  # 5, then 1 boundary repeat + 4, then 1 + 2

    more = await seed(http, sim.base_url, token, TEMPLATE, 2, prefix="N")
    clock.advance(3)
    package, files = await seller.export(filters("Subject1", checkpoint, restrict=True))
    assert {m["invoiceNumber"] for m in metadata_of(files)} == set(more)     # nothing missed, nothing repeated


async def test_ten_concurrent_exports_at_most(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(export_delay_s=60), clock=clock)
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, ["InvoiceRead"]))
    body = await seller.export_body(filters("Subject1", clock.now() - dt.timedelta(days=1)))
    references = []
    for _ in range(10):
        async with seller.start_raw(body) as resp:
            references.append((await expect(resp, 201))["referenceNumber"])
    async with seller.start_raw(body) as resp:
        detail = await expect_error(resp, 21182)
    assert "10" in detail["details"][0]
    assert (await seller.status(references[0]))["status"]["code"] == 100
    clock.advance(60)
    assert (await seller.wait(references[0]))["status"]["code"] == 200
    async with seller.start_raw(body) as resp:
        await expect(resp, 201)


async def test_statuses_415_420_210_and_410(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(hwm_lag_s=60), clock=clock)
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, ["InvoiceRead"]))

    after_hwm = await seller.start(filters("Subject1", clock.now() - dt.timedelta(seconds=30), restrict=True))
    status = await seller.status(after_hwm)
    assert status["status"]["code"] == 420 and "package" not in status

    body = await seller.export_body(filters("Subject1", clock.now() - dt.timedelta(days=1)))
    stranger = {**body, "encryption": {**body["encryption"], "publicKeyId": base64.b64encode(os.urandom(32)).decode()}}
    async with seller.start_raw(stranger) as resp:
        await expect_error(resp, 21470)                      # an unknown key: refused at once, no export
    body["encryption"]["encryptedSymmetricKey"] = base64.b64encode(os.urandom(256)).decode()
    async with seller.start_raw(body) as resp:
        bad_key = (await expect(resp, 201))["referenceNumber"]
    assert (await seller.status(bad_key))["status"]["code"] == 415

    done = await seller.start(filters("Subject1", clock.now() - dt.timedelta(days=1)))
    final = await seller.wait(done)
    assert final["status"]["code"] == 200
    clock.advance(3 * 24 * 3600)
    expired = await seller.status(done)
    assert expired["status"]["code"] == 210 and "package" not in expired
    async with http.get(final["package"]["parts"][0]["url"]) as resp:
        assert resp.status in (403, 404)                     # the link and the package are gone

    clock.advance(4 * 24 * 3600)
    async with http.get(f"{sim.base_url}/invoices/exports/{done}", headers=seller.headers) as resp:
        gone = await expect(resp, 410)
    assert resp.content_type == "application/problem+json" and gone["status"] == 410
    async with http.get(f"{sim.base_url}/invoices/exports/20250626-EH-213D593000-4DE10D80A5-E9",
                        headers=seller.headers) as resp:
        await expect_error(resp, 21175)


async def test_the_package_stops_at_the_compressed_size_cap(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """openapi.json POST /invoices/exports: invoices are added "until 10 000 invoices or 1 GB compressed";
    _metadata.json does not count. Shrunk here to about two invoices' worth."""
    one = len(zlib.compress(TEMPLATE)[2:-4])                 # deflated size of one invoice (raw DEFLATE)
    cap = int(2.6 * one)
    clock = ManualClock()
    sim = await sim_factory(config=config(export_max_compressed=cap, hwm_lag_s=1), clock=clock)
    start = clock.now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    sent = await seed(http, sim.base_url, token, TEMPLATE, 5)
    clock.advance(2)
    seller = Receiver(http, sim.base_url, token)
    received: dict[str, bytes] = {}
    checkpoint, rounds = start.isoformat(), 0
    for compression in ("Zip", "TarGz", "Zip", "TarGz", "Zip"):
        rounds += 1
        reference = await seller.start(filters("Subject1", checkpoint, restrict=True), compressionType=compression)
        final = await seller.wait(reference)
        package = final["package"]
        archive = await seller.download_archive(package)
        files = unpack(archive, compression)
        metadata = metadata_of(files)
        assert package["invoiceCount"] == len(metadata) == len(files) - 1 <= 2
        if compression == "Zip":
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                assert sum(i.compress_size for i in zf.infolist() if i.filename != "_metadata.json") <= cap
        received |= {m["invoiceNumber"]: files[f"{m['ksefNumber']}.xml"] for m in metadata}
        if not package["isTruncated"]:
            break
        assert package["lastPermanentStorageDate"] == metadata[-1]["permanentStorageDate"]
        checkpoint = package["lastPermanentStorageDate"]
    assert received == sent and rounds == 4                  # 2, then 1 repeat + 1 ... the boundary repeats


async def test_truncation_names_the_last_issue_or_invoicing_date(sim_factory: Any,
                                                                 http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config(query_cap=2))
    start = an_hour_ago()
    token = await access_token(http, sim.base_url, SELLER)
    await seed(http, sim.base_url, token, TEMPLATE, 3)
    seller = Receiver(http, sim.base_url, token)
    package, files = await seller.export(filters("Subject1", start, date_type="Invoicing"))
    metadata = metadata_of(files)
    assert (package["invoiceCount"], package["isTruncated"]) == (2, True)
    assert package["lastInvoicingDate"] == metadata[-1]["invoicingDate"]
    assert "lastPermanentStorageDate" not in package and "permanentStorageHwmDate" not in package

    issued = dt.date.fromisoformat(metadata[0]["issueDate"])
    day = dt.datetime.combine(issued, dt.time(), dt.UTC)
    package, files = await seller.export(filters("Subject1", day - dt.timedelta(days=1), date_type="Issue",
                                                 end=day + dt.timedelta(days=1)))
    assert (package["invoiceCount"], package["isTruncated"]) == (2, True)
    assert package["lastIssueDate"] == metadata_of(files)[-1]["issueDate"] == issued.isoformat()
    assert "lastInvoicingDate" not in package


async def test_an_export_caught_by_a_restart_is_built_afterwards(sim_factory: Any, http: aiohttp.ClientSession,
                                                                 tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "sim.db"
    first = await sim_factory(config=config(state_path=state, export_delay_s=60), clock=clock)
    start = clock.now() - dt.timedelta(hours=1)
    token = await access_token(http, first.base_url, SELLER)
    sent = await seed(http, first.base_url, token, TEMPLATE, 3)
    clock.advance(1)                                         # past their permanentStorageDate
    seller = Receiver(http, first.base_url, token)
    reference = await seller.start(filters("Subject1", start))
    assert (await seller.status(reference))["status"]["code"] == 100
    await first.server.close()

    second = await sim_factory(config=config(state_path=state), clock=ManualClock(clock.now()))
    second.clock.advance(60)
    seller.base_url = second.base_url
    final = await seller.wait(reference, timeout_s=10)
    assert final["status"]["code"] == 200
    files = await seller.download(final["package"])
    assert sorted(files[f"{m['ksefNumber']}.xml"] for m in metadata_of(files)) == sorted(sent.values())
