"""Test-side session crypto, written from PROTOCOL.md §2.2 with `cryptography` primitives (never the
simulator's helpers): RSA-OAEP-SHA256 wrap of a random AES-256 key with the SymmetricKeyEncryption
certificate fetched over HTTP, and AES-256-CBC with PKCS#7 and the session IV, no IV prefix (§13.1).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

FA3 = {"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


async def symmetric_key_certificate(http: aiohttp.ClientSession, base_url: str) -> tuple[rsa.RSAPublicKey, str]:
    """The SymmetricKeyEncryption public key valid now with the latest validFrom, and its publicKeyId."""
    async with http.get(f"{base_url}/security/public-key-certificates") as resp:
        assert resp.status == 200, await resp.text()
        items = await resp.json()
    usable = sorted((i for i in items if "SymmetricKeyEncryption" in i["usage"]), key=lambda i: i["validFrom"])
    chosen = usable[-1]
    public = x509.load_der_x509_certificate(base64.b64decode(chosen["certificate"])).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    return public, chosen["publicKeyId"]


def wrap_key(public: rsa.RSAPublicKey, key: bytes) -> bytes:
    return public.encrypt(key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))


def aes_encrypt(key: bytes, iv: bytes, plain: bytes) -> bytes:
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def aes_encrypt_raw(key: bytes, iv: bytes, blocks: bytes) -> bytes:
    """CBC without padding (for deliberately bad padding)."""
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(blocks) + encryptor.finalize()


@dataclass
class SessionKeys:
    key: bytes = field(default_factory=lambda: os.urandom(32))
    iv: bytes = field(default_factory=lambda: os.urandom(16))

    def encryption(self, public: rsa.RSAPublicKey, public_key_id: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"encryptedSymmetricKey": b64(wrap_key(public, self.key)),
                                "initializationVector": b64(self.iv)}
        if public_key_id is not None:
            info["publicKeyId"] = public_key_id
        return info

    def send_body(self, plain: bytes, **overrides: Any) -> dict[str, Any]:
        """A SendInvoiceRequest for `plain`, with correct sizes and hashes unless overridden."""
        encrypted = aes_encrypt(self.key, self.iv, plain)
        body: dict[str, Any] = {"invoiceHash": sha256_b64(plain), "invoiceSize": len(plain),
                                "encryptedInvoiceHash": sha256_b64(encrypted), "encryptedInvoiceSize": len(encrypted),
                                "encryptedInvoiceContent": b64(encrypted), "offlineMode": False}
        body.update(overrides)
        return body
