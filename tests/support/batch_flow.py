"""Test-side batch session flow (PROTOCOL.md §5) with our own crypto (session_crypto): build a ZIP or
tar.gz, split it binarily, encrypt every part separately with the session key and IV (AES-256-CBC,
PKCS#7, no IV prefix), open, upload to the pre-signed URLs without a bearer, close, poll."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ksefd.samples import make_invoice
from tests.support.online_flow import expect
from tests.support.session_crypto import FA3, SessionKeys, aes_encrypt, sha256_b64, symmetric_key_certificate


def invoices(template: bytes, count: int, prefix: str = "B", **kwargs: Any) -> list[tuple[str, bytes]]:
    """`count` distinct invoices (P_2 varied) named `<prefix>-<n>.xml`."""
    return [(f"{prefix}-{n:05d}.xml", make_invoice(template, number=f"{prefix}/{n}", **kwargs)) for n in range(count)]


def zip_archive(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buffer.getvalue()


def targz_archive(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def split(archive: bytes, parts: int) -> list[bytes]:
    """Binary split into `parts` pieces of (nearly) equal size (no ZIP-level splitting, §5.2)."""
    size = -(-len(archive) // parts)
    return [archive[i * size:(i + 1) * size] for i in range(parts)]


@dataclass
class Batch:
    """One authenticated caller and one batch session."""

    http: aiohttp.ClientSession
    base_url: str
    token: str
    keys: SessionKeys = field(default_factory=SessionKeys)
    reference: str = ""
    uploads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def open_body(self, archive: bytes, encrypted: list[bytes], compression: str | None = "Zip",
                        **overrides: Any) -> dict[str, Any]:
        public, key_id = await symmetric_key_certificate(self.http, self.base_url)
        batch_file: dict[str, Any] = {
            "fileSize": len(archive), "fileHash": sha256_b64(archive),
            "fileParts": [{"ordinalNumber": n, "fileSize": len(part), "fileHash": sha256_b64(part)}
                          for n, part in enumerate(encrypted, start=1)]}
        if compression is not None:
            batch_file["compressionType"] = compression
        body: dict[str, Any] = {"formCode": FA3, "batchFile": batch_file,
                                "encryption": self.keys.encryption(public, key_id)}
        body.update(overrides)
        return body

    def encrypt(self, chunks: list[bytes]) -> list[bytes]:
        return [aes_encrypt(self.keys.key, self.keys.iv, chunk) for chunk in chunks]

    async def open_raw(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        return await self.http.post(f"{self.base_url}/sessions/batch", json=body, headers=self.headers)

    async def open(self, body: dict[str, Any]) -> dict[str, Any]:
        async with await self.open_raw(body) as resp:
            opened: dict[str, Any] = await expect(resp, 201)
        self.reference = opened["referenceNumber"]
        self.uploads = sorted(opened["partUploadRequests"], key=lambda u: u["ordinalNumber"])
        return opened

    async def put(self, ordinal: int, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """PUT one part exactly as told (method, URL, headers), never with the bearer."""
        upload = self.uploads[ordinal - 1]
        sent = dict(upload["headers"]) if headers is None else headers
        async with self.http.request(upload["method"], upload["url"], data=io.BytesIO(data), headers=sent) as resp:
            return resp.status, await resp.text()

    async def upload_all(self, encrypted: list[bytes]) -> None:
        results = await asyncio.gather(*(self.put(n, part) for n, part in enumerate(encrypted, start=1)))
        assert all(status == 201 for status, _ in results), results

    def close_raw(self) -> Any:
        return self.http.post(f"{self.base_url}/sessions/batch/{self.reference}/close", headers=self.headers)

    async def close(self) -> None:
        async with self.close_raw() as resp:
            await expect(resp, 204)

    async def submit(self, archive: bytes, parts: int = 1, compression: str = "Zip") -> dict[str, Any]:
        """Open, upload every part, close; returns the open response."""
        encrypted = self.encrypt(split(archive, parts))
        opened = await self.open(await self.open_body(archive, encrypted, compression))
        await self.upload_all(encrypted)
        await self.close()
        return opened

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/sessions/{self.reference}", headers=self.headers) as resp:
            body: dict[str, Any] = await expect(resp, 200)
            return body

    async def wait(self, timeout_s: float = 60.0, interval_s: float = 0.02) -> dict[str, Any]:
        """Poll until the session leaves 100/150/170."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            body = await self.status()
            if body["status"]["code"] not in (100, 150, 170):
                return body
            assert loop.time() < deadline, f"batch session {self.reference} still {body['status']}"
            await asyncio.sleep(interval_s)

    async def invoices(self, page_size: int = 1000, failed: bool = False) -> list[dict[str, Any]]:
        """Every invoice of the session, following x-continuation-token."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        path = f"{self.base_url}/sessions/{self.reference}/invoices" + ("/failed" if failed else "")
        while True:
            headers = {**self.headers, **({"x-continuation-token": token} if token else {})}
            async with self.http.get(path, params={"pageSize": str(page_size)}, headers=headers) as resp:
                body = await expect(resp, 200)
            found += body["invoices"]
            token = body.get("continuationToken")
            if not token:
                return found
