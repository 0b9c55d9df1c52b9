"""Batch session refusals (issue #3 item 1; PROTOCOL.md §4.4, §5): the synchronous 400s of opening and
the documented session statuses 405, 415, 420, 430, 435, 440 and 445 of processing."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import pytest

from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, split, targz_archive, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import expect, sim_config
from tests.support.session_crypto import aes_encrypt, sha256_b64

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
WITH_ATTACHMENT = (SAMPLES / "invoices" / "FA_3_Przyklad_24.xml").read_bytes()
NIP = "9999999999"


async def batch_for(sim: Any, http: aiohttp.ClientSession) -> Batch:
    return Batch(http, sim.base_url, await access_token(http, sim.base_url, NIP))


async def error_code(resp: aiohttp.ClientResponse) -> int:
    code: int = (await expect(resp, 400))["exception"]["exceptionDetailList"][0]["exceptionCode"]
    return code


@pytest.mark.sends_invalid_requests
async def test_more_than_50_parts_is_21161(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    body = await batch.open_body(archive, batch.encrypt(split(archive, 51)))
    async with await batch.open_raw(body) as resp:
        assert await error_code(resp) == 21161


@pytest.mark.sends_invalid_requests
async def test_malformed_open_requests_are_21405(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """openapi.json OpenBatchSessionRequest: 5 GB at most (PROTOCOL.md §5.2), parts 1..50, required fields."""
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    body = await batch.open_body(archive, batch.encrypt([archive]))
    package = body["batchFile"]
    part = package["fileParts"][0]
    for bad in ({**body, "batchFile": {**package, "fileSize": 5_000_000_001}},
                {**body, "batchFile": {**package, "fileParts": []}},
                {**body, "batchFile": {**package, "compressionType": "Rar"}},
                {**body, "batchFile": {**package, "fileHash": "not a hash"}},
                {**body, "batchFile": {**package, "fileParts": [{**part, "ordinalNumber": 0}]}},
                {**body, "batchFile": {**package, "fileParts": [{k: v for k, v in part.items() if k != "fileHash"}]}},
                {k: v for k, v in body.items() if k != "encryption"},
                {**body, "formCode": {**body["formCode"], "systemCode": "FA(3)"}}):
        async with await batch.open_raw(bad) as resp:
            assert await error_code(resp) == 21405, bad


async def test_open_refuses_oversized_parts_bad_ordinals_and_unknown_keys(sim_factory: Any,
                                                                          http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    encrypted = batch.encrypt([archive])
    body = await batch.open_body(archive, encrypted)

    too_big = {**body, "batchFile": {**body["batchFile"], "fileParts": [
        {"ordinalNumber": 1, "fileSize": 100_000_032, "fileHash": sha256_b64(encrypted[0])}]}}
    async with await batch.open_raw(too_big) as resp:
        assert await error_code(resp) == 21157               # > 100 MB before encryption

    gap = {**body, "batchFile": {**body["batchFile"], "fileParts": [
        {**body["batchFile"]["fileParts"][0], "ordinalNumber": 2}]}}
    async with await batch.open_raw(gap) as resp:
        assert await error_code(resp) == 21405

    stranger = base64.b64encode(os.urandom(32)).decode()
    unknown_key = {**body, "encryption": {**body["encryption"], "publicKeyId": stranger}}
    async with await batch.open_raw(unknown_key) as resp:
        assert await error_code(resp) == 21470


async def test_undecryptable_key_is_status_415(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    archive = zip_archive(invoices(TEMPLATE, 1))
    body = await batch.open_body(archive, batch.encrypt([archive]))
    body["encryption"]["encryptedSymmetricKey"] = base64.b64encode(os.urandom(256)).decode()
    await batch.open(body)
    assert (await batch.status())["status"]["code"] == 415
    async with batch.close_raw() as resp:
        assert await error_code(resp) == 21180


async def test_processing_failures_have_the_documented_statuses(sim_factory: Any,
                                                                http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    good = zip_archive(invoices(TEMPLATE, 2))

    batch = await batch_for(sim, http)                       # 405: a part's declared hash is wrong
    encrypted = batch.encrypt([good])
    body = await batch.open_body(good, encrypted)
    body["batchFile"]["fileParts"][0]["fileHash"] = sha256_b64(b"other")
    await batch.open(body)
    await batch.upload_all(encrypted)
    await batch.close()
    final = await batch.wait()
    assert final["status"]["code"] == 405 and "1" in final["status"]["details"][0], final

    batch = await batch_for(sim, http)                       # 405: the whole archive's hash is wrong
    encrypted = batch.encrypt([good])
    body = await batch.open_body(good, encrypted)
    body["batchFile"]["fileHash"] = sha256_b64(b"other")
    await batch.open(body)
    await batch.upload_all(encrypted)
    await batch.close()
    assert (await batch.wait())["status"]["code"] == 405

    batch = await batch_for(sim, http)                       # 435: a part encrypted with another key
    encrypted = [aes_encrypt(os.urandom(32), batch.keys.iv, good)]
    await batch.open(await batch.open_body(good, encrypted))
    await batch.upload_all(encrypted)
    await batch.close()
    assert (await batch.wait())["status"]["code"] == 435

    batch = await batch_for(sim, http)                       # 430: not an archive of the declared type
    tar = targz_archive(invoices(TEMPLATE, 1))
    encrypted = batch.encrypt([tar])
    await batch.open(await batch.open_body(tar, encrypted, compression="Zip"))
    await batch.upload_all(encrypted)
    await batch.close()
    assert (await batch.wait())["status"]["code"] == 430

    batch = await batch_for(sim, http)                       # 440: an empty package
    empty = zip_archive([])
    await batch.submit(empty)
    assert (await batch.wait())["status"] == {"code": 440, "description": "Sesja anulowana",
                                              "details": ["Nie przesłano faktur"]}

    batch = await batch_for(sim, http)                       # 445: no valid invoice
    await batch.submit(zip_archive([("a.xml", b"<a/>"), ("b.xml", b"\xef\xbb\xbf<b/>")]))
    final = await batch.wait()
    assert final["status"]["code"] == 445 and final["failedInvoiceCount"] == 2, final


async def test_more_invoices_than_the_context_allows_is_420(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    limits = {"onlineSession": {"maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3, "maxInvoices": 5},
              "batchSession": {"maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3, "maxInvoices": 2},
              "collectiveIdentifier": {"maxInvoices": 10}}
    async with http.post(f"{sim.base_url}/testdata/limits/context/session", json=limits, headers=batch.headers) as r:
        assert r.status == 200
    await batch.submit(zip_archive(invoices(TEMPLATE, 3)))
    final = await batch.wait()
    assert final["status"]["code"] == 420 and "2" in final["status"]["details"][0], final


async def test_attachments_only_when_enabled_for_the_nip(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = await batch_for(sim, http)
    await batch.submit(zip_archive(invoices(WITH_ATTACHMENT, 1, prefix="Z")))
    final = await batch.wait()
    assert final["status"]["code"] == 445
    assert [i["status"]["code"] for i in await batch.invoices()] == [415]

    async with http.post(f"{sim.base_url}/testdata/attachment", json={"nip": NIP}) as resp:
        assert resp.status == 200
    batch = await batch_for(sim, http)
    await batch.submit(zip_archive(invoices(WITH_ATTACHMENT, 1, prefix="Y")))
    final = await batch.wait()
    assert (final["status"]["code"], final["successfulInvoiceCount"]) == (200, 1), final
