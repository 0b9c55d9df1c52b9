"""GET /security/public-key-certificates: two RSA-2048 keys with ids computed as the spec says."""

from __future__ import annotations

import base64
import hashlib

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


async def test_two_rsa_keys_with_spec_ids(sim, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.base_url}/security/public-key-certificates") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert sorted(u for item in body for u in item["usage"]) == ["KsefTokenEncryption", "SymmetricKeyEncryption"]
    for item in body:
        der = base64.b64decode(item["certificate"])
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert item["publicKeyId"] == base64.b64encode(hashlib.sha256(spki).digest()).decode()
        assert item["certificateId"] == base64.b64encode(hashlib.sha256(der).digest()).decode()
        assert len(item["publicKeyId"]) == 44
    assert body[0]["publicKeyId"] != body[1]["publicKeyId"]
    assert sim.violations.checked_responses == 1
