"""authorizationPolicy.allowedIps (PROTOCOL.md §3.5): calls from other addresses get 403 ip-not-allowed."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support.ksef_auth import (
    _finish,
    auth_token_request,
    bearer,
    challenge,
    create_ksef_token,
    encrypt_token,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
    token_encryption_key,
)

NIP = "5265877635"


async def _login_with_policy(http: aiohttp.ClientSession, base_url: str, policy: dict[str, Any]) -> str:
    token = await create_ksef_token(http, base_url, NIP, ["InvoiceRead"])
    found = await challenge(http, base_url)
    public, key_id = await token_encryption_key(http, base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, token, found["timestampMs"]), "publicKeyId": key_id,
            "authorizationPolicy": {"allowedIps": policy}}
    async with http.post(f"{base_url}/auth/ksef-token", json=body) as resp:
        assert resp.status == 202, await resp.text()
        init = await resp.json()
    return (await _finish(http, base_url, init)).access_token


@pytest.mark.parametrize("policy", [
    {"ip4Addresses": ["127.0.0.1"]},
    {"ip4Ranges": ["127.0.0.0-127.0.0.9"]},
    {"ip4Masks": ["127.0.0.0/8"]},
])
async def test_call_from_an_allowed_address_passes(sim: Any, http: aiohttp.ClientSession,
                                                   policy: dict[str, Any]) -> None:
    access = await _login_with_policy(http, sim.base_url, policy)
    async with http.get(f"{sim.base_url}/tokens", headers={"Authorization": f"Bearer {access}"}) as resp:
        assert resp.status == 200, await resp.text()


async def test_call_from_another_address_gets_ip_not_allowed(sim: Any, http: aiohttp.ClientSession) -> None:
    access = await _login_with_policy(http, sim.base_url, {"ip4Addresses": ["10.1.2.3"], "ip4Masks": ["10.0.0.0/8"]})
    async with http.get(f"{sim.base_url}/tokens", headers={"Authorization": f"Bearer {access}"}) as resp:
        assert resp.status == 403
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
    assert body["reasonCode"] == "ip-not-allowed"
    assert body["security"] == {"clientIp": "127.0.0.1"}


@pytest.mark.parametrize(("addresses", "expected"), [("<Ip4Address>127.0.0.1</Ip4Address>", 200),
                                                     ("<Ip4Mask>10.0.0.0/8</Ip4Mask>", 403)])
async def test_xades_authorization_policy_is_enforced(sim: Any, http: aiohttp.ClientSession, addresses: str,
                                                      expected: int) -> None:
    """The same policy inside a signed AuthTokenRequest (AuthorizationPolicy/AllowedIps, PROTOCOL.md §3.3)."""
    found = await challenge(http, sim.base_url)
    cert, key = self_signed_certificate(nip=NIP)
    xml = auth_token_request(found["challenge"], context_value=NIP).replace(
        b"</SubjectIdentifierType>",
        f"</SubjectIdentifierType><AuthorizationPolicy><AllowedIps>{addresses}</AllowedIps></AuthorizationPolicy>"
        .encode())
    access = (await _finish(http, sim.base_url, await submit_xades(http, sim.base_url,
                                                                   sign_auth_request(xml, cert, key)))).access_token
    async with http.get(f"{sim.base_url}/tokens", headers=bearer(access)) as resp:
        assert resp.status == expected, await resp.text()
