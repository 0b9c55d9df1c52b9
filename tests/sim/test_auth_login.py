"""End-to-end logins over HTTP with our own crypto: XAdES (RSA, EC, seal, fingerprint) and KSeF tokens."""

from __future__ import annotations

import aiohttp

from tests.support.ksef_auth import (
    access_token,
    claims,
    create_ksef_token,
    owner_login,
    self_signed_certificate,
    token_login,
    xades_login,
)

NIP = "5265877635"


async def test_owner_xades_login_rsa(sim, http: aiohttp.ClientSession) -> None:
    tokens = await owner_login(http, sim.base_url, NIP)
    payload = claims(tokens.access_token)
    assert payload["token-type"] == "ContextToken"
    assert payload["context-identifier-type"] == "Nip" and payload["context-identifier-value"] == NIP
    assert payload["subject-type"] == "Nip" and payload["subject-value"] == NIP
    assert payload["authentication-method"] == "XadesSignature"
    assert payload["auth-ref"] == tokens.reference_number
    assert set(payload["permissions"]) == {"InvoiceRead", "InvoiceWrite", "CredentialsRead", "CredentialsManage",
                                           "Introspection", "SubunitManage"}


async def test_token_login(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    tokens = await token_login(http, sim.base_url, context_nip=NIP, token=token)
    payload = claims(tokens.access_token)
    assert payload["authentication-method"] == "Token"
    assert payload["permissions"] == ["InvoiceRead"]
    assert payload["ksef-token-ref"] == token.split("|")[0]


async def test_access_token_default(sim, http: aiohttp.ClientSession) -> None:
    payload = claims(await access_token(http, sim.base_url, NIP))
    assert payload["permissions"] == ["InvoiceRead", "InvoiceWrite"]


async def test_ec_login(sim, http: aiohttp.ClientSession) -> None:
    cert, key = self_signed_certificate(nip=NIP, key_type="ec")
    tokens = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    assert claims(tokens.access_token)["subject-value"] == NIP
