"""Test-side online session flow over HTTP (PROTOCOL.md §4): open, send, poll, close, read UPOs.
Built on session_crypto (our own crypto) and ksef_auth (tokens the way users get them)."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from ksefd.sim.config import SimConfig
from tests.support.session_crypto import FA3, SessionKeys, symmetric_key_certificate


def sim_config(**settings: Any) -> SimConfig:
    """Settings for session tests: rate limits off, since these tests send and poll faster than PRD's
    limits allow (PROTOCOL.md §7: invoiceSend 10/s, 30/min); the limits have their own tests."""
    return SimConfig(limits_profile="off", **settings)


def is_final(code: int) -> bool:
    return code >= 200   # 100 and 150 are intermediate (PROTOCOL.md §10.1)


async def expect(resp: aiohttp.ClientResponse, status: int) -> Any:
    body = await resp.json(content_type=None) if resp.content_length != 0 and resp.status != 204 else None
    assert resp.status == status, f"{resp.method} {resp.url} -> {resp.status} (expected {status}): {body}"
    return body


async def expect_error(resp: aiohttp.ClientResponse, code: int) -> dict[str, Any]:
    """A 400 ExceptionResponse carrying `code`; returns the exception detail."""
    body = await expect(resp, 400)
    detail: dict[str, Any] = body["exception"]["exceptionDetailList"][0]
    assert detail["exceptionCode"] == code, body
    return detail


@dataclass
class Online:
    """One authenticated caller and one online session."""

    http: aiohttp.ClientSession
    base_url: str
    token: str
    keys: SessionKeys = field(default_factory=SessionKeys)
    reference: str = ""
    public: rsa.RSAPublicKey | None = None
    key_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def open_raw(self, *, form_code: dict[str, str] | None = None, encryption: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        if self.public is None:
            self.public, self.key_id = await symmetric_key_certificate(self.http, self.base_url)
        body = {"formCode": form_code or FA3,
                "encryption": encryption or self.keys.encryption(self.public, self.key_id)}
        return await self.http.post(f"{self.base_url}/sessions/online", json=body,
                                    headers={**self.headers, **(headers or {})})

    async def open(self, **kwargs: Any) -> dict[str, Any]:
        async with await self.open_raw(**kwargs) as resp:
            body: dict[str, Any] = await expect(resp, 201)
        self.reference = body["referenceNumber"]
        return body

    def send_raw(self, body: dict[str, Any]) -> Any:
        # BytesIO: aiohttp warns (an error under pytest) about big raw bodies, and invoices reach 3 MB.
        return self.http.post(f"{self.base_url}/sessions/online/{self.reference}/invoices",
                              data=io.BytesIO(json.dumps(body).encode()),
                              headers={**self.headers, "Content-Type": "application/json"})

    async def send(self, plain: bytes, **overrides: Any) -> str:
        async with self.send_raw(self.keys.send_body(plain, **overrides)) as resp:
            body = await expect(resp, 202)
        reference: str = body["referenceNumber"]
        return reference

    async def invoice(self, invoice_reference: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/sessions/{self.reference}/invoices/{invoice_reference}",
                                 headers=self.headers) as resp:
            body: dict[str, Any] = await expect(resp, 200)
            return body

    async def wait_invoice(self, invoice_reference: str, attempts: int = 2000) -> dict[str, Any]:
        for _ in range(attempts):
            body = await self.invoice(invoice_reference)
            if is_final(body["status"]["code"]):
                return body
            await asyncio.sleep(0.01)
        raise AssertionError(f"invoice {invoice_reference} still processing")

    async def submit(self, plain: bytes, **overrides: Any) -> dict[str, Any]:
        """Send and wait for the verdict."""
        return await self.wait_invoice(await self.send(plain, **overrides))

    async def close(self) -> None:
        async with self.http.post(f"{self.base_url}/sessions/online/{self.reference}/close",
                                  headers=self.headers) as resp:
            await expect(resp, 204)

    async def status(self, reference: str | None = None) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/sessions/{reference or self.reference}",
                                 headers=self.headers) as resp:
            body: dict[str, Any] = await expect(resp, 200)
            return body

    async def wait_session(self, attempts: int = 2000) -> dict[str, Any]:
        for _ in range(attempts):
            body = await self.status()
            if body["status"]["code"] not in (100, 150, 170):
                return body
            await asyncio.sleep(0.01)
        raise AssertionError(f"session {self.reference} still in progress")

    async def get_bytes(self, path: str) -> tuple[bytes, dict[str, str]]:
        async with self.http.get(f"{self.base_url}{path}", headers=self.headers) as resp:
            data = await resp.read()
            assert resp.status == 200, (resp.status, data[:500])
            return data, dict(resp.headers)
