"""Test-side receiving (PROTOCOL.md §6) with our own crypto: metadata queries, exports (start, poll,
download the parts without a bearer, decrypt each with our AES key and IV, join, unpack), and a
quick way to put invoices into the simulator (one batch session from seller to buyer)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.online_flow import expect
from tests.support.session_crypto import SessionKeys, sha256_b64, symmetric_key_certificate


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def filters(subject: str, start: dt.datetime | str, *, date_type: str = "PermanentStorage",
            end: dt.datetime | None = None, restrict: bool | None = None, **more: Any) -> dict[str, Any]:
    date_range: dict[str, Any] = {"dateType": date_type, "from": start if isinstance(start, str) else stamp(start)}
    if end is not None:
        date_range["to"] = stamp(end)
    if restrict is not None:
        date_range["restrictToPermanentStorageHwmDate"] = restrict
    return {"subjectType": subject, "dateRange": date_range, **more}


def aes_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def unpack(archive: bytes, compression: str) -> dict[str, bytes]:
    if compression == "TarGz":
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


async def seed(http: aiohttp.ClientSession, base_url: str, seller_token: str, template: bytes, count: int, *,
               prefix: str = "R", **changes: Any) -> dict[str, bytes]:
    """`count` invoices (ksefd.samples.make_invoice `changes`: buyer_nip, issue_date, ...) accepted in one
    batch session; returns {P_2: exact bytes}."""
    batch = Batch(http, base_url, seller_token)
    files = invoices(template, count, prefix=prefix, **changes)
    await batch.submit(zip_archive(files))
    final = await batch.wait()
    assert final["successfulInvoiceCount"] == count, final
    return {f"{prefix}/{n}": data for n, (_, data) in enumerate(files)}


@dataclass
class Receiver:
    """One authenticated caller with InvoiceRead."""

    http: aiohttp.ClientSession
    base_url: str
    token: str
    keys: SessionKeys = field(default_factory=SessionKeys)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def query_raw(self, body: dict[str, Any], **params: Any) -> Any:
        return self.http.post(f"{self.base_url}/invoices/query/metadata", json=body, headers=self.headers,
                              params={k: str(v) for k, v in params.items()})

    async def query(self, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        async with self.query_raw(body, **params) as resp:
            found: dict[str, Any] = await expect(resp, 200)
            return found

    async def export_body(self, body_filters: dict[str, Any], **options: Any) -> dict[str, Any]:
        public, key_id = await symmetric_key_certificate(self.http, self.base_url)
        return {"encryption": self.keys.encryption(public, key_id), "filters": body_filters, **options}

    def start_raw(self, body: dict[str, Any]) -> Any:
        return self.http.post(f"{self.base_url}/invoices/exports", json=body, headers=self.headers)

    async def start(self, body_filters: dict[str, Any], **options: Any) -> str:
        async with self.start_raw(await self.export_body(body_filters, **options)) as resp:
            reference: str = (await expect(resp, 201))["referenceNumber"]
            return reference

    async def status(self, reference: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/invoices/exports/{reference}", headers=self.headers) as resp:
            body: dict[str, Any] = await expect(resp, 200)
            return body

    async def wait(self, reference: str, timeout_s: float = 60) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            body = await self.status(reference)
            if body["status"]["code"] != 100:
                return body
            assert loop.time() < deadline, f"export {reference} still running"
            await asyncio.sleep(0.02)

    async def download(self, package: dict[str, Any]) -> dict[str, bytes]:
        """Every part by GET without a bearer, checked, decrypted, joined in order and unpacked."""
        return unpack(await self.download_archive(package), package["compressionType"])

    async def download_archive(self, package: dict[str, Any]) -> bytes:
        """The package's archive: every part by GET without a bearer, checked, decrypted, joined in order."""
        plain = []
        for part in sorted(package["parts"], key=lambda p: p["ordinalNumber"]):
            async with self.http.request(part["method"], part["url"]) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.read()
                assert resp.headers["x-ms-meta-hash"] == part["encryptedPartHash"]     # openapi.json part url
            assert (len(data), sha256_b64(data)) == (part["encryptedPartSize"], part["encryptedPartHash"])
            chunk = aes_decrypt(self.keys.key, self.keys.iv, data)
            assert (len(chunk), sha256_b64(chunk)) == (part["partSize"], part["partHash"])
            plain.append(chunk)
        archive = b"".join(plain)
        assert len(archive) == package["size"]
        return archive

    async def export(self, body_filters: dict[str, Any], **options: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Start, wait for 200, download: (package, files)."""
        final = await self.wait(await self.start(body_filters, **options))
        assert final["status"]["code"] == 200, final
        return final["package"], await self.download(final["package"])


def metadata_of(files: dict[str, bytes]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(files["_metadata.json"])["invoices"]
    return found
