"""POST /auth/ksef-token (PROTOCOL.md §3.2): decryption of `token|timestampMs`, and every token failure
surfacing as auth status 450 with its documented detail rather than as an HTTP error."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import pytest

from tests.support.ksef_auth import (
    AuthFailed,
    challenge,
    create_ksef_token,
    encrypt_token,
    owner_login,
    self_signed_certificate,
    start_token_auth,
    token_encryption_key,
    token_login,
    wait_for_auth,
    xades_login,
)

NIP = "5265877635"
OTHER_NIP = "7762811692"


async def status_of(http: aiohttp.ClientSession, base_url: str, init: dict[str, Any]) -> dict[str, Any]:
    return await wait_for_auth(http, base_url, init["referenceNumber"], init["authenticationToken"]["token"])


async def post_token_auth(http: aiohttp.ClientSession, base_url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(f"{base_url}/auth/ksef-token", json=body) as resp:
        return resp.status, await resp.json()


def detail(status: dict[str, Any]) -> tuple[int, str]:
    return status["code"], status["details"][0]


async def test_garbage_token_is_450_bad_token(sim, http: aiohttp.ClientSession) -> None:
    init = await start_token_auth(http, sim.base_url, context_nip=NIP,
                                  token=f"20251010-EC-1DCE3E3000-12ECB5B36E-45|nip-{NIP}|{'ab' * 32}")
    status = await status_of(http, sim.base_url, init)
    assert detail(status) == (450, "Nieprawidłowy token")
    assert status["description"] == "Uwierzytelnianie zakończone niepowodzeniem z powodu błędnego tokenu"


async def test_revoked_token_is_450_and_its_refresh_21301(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    tokens = await token_login(http, sim.base_url, context_nip=NIP, token=token)
    owner = await owner_login(http, sim.base_url, NIP)
    async with http.delete(f"{sim.base_url}/tokens/{token.split('|')[0]}",
                           headers={"Authorization": f"Bearer {owner.access_token}"}) as resp:
        assert resp.status == 204
    init = await start_token_auth(http, sim.base_url, context_nip=NIP, token=token)
    assert detail(await status_of(http, sim.base_url, init)) == (450, "Token unieważniony")
    async with http.post(f"{sim.base_url}/auth/token/refresh",
                         headers={"Authorization": f"Bearer {tokens.refresh_token}"}) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21301
    assert body["exception"]["exceptionDetailList"][0]["details"] == ["Token KSeF został unieważniony."]


async def test_token_works_only_in_its_own_context(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    init = await start_token_auth(http, sim.base_url, context_nip=OTHER_NIP, token=token)
    assert detail(await status_of(http, sim.base_url, init)) == (
        450, f"Token nie może być użyty w kontekście {OTHER_NIP}")


async def test_pending_token_is_450_inactive(sim_factory, manual_clock, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    owner = await owner_login(http, sim.base_url, NIP)
    async with http.post(f"{sim.base_url}/tokens", json={"permissions": ["InvoiceRead"], "description": "pending"},
                         headers={"Authorization": f"Bearer {owner.access_token}"}) as resp:
        created = await resp.json()
    init = await start_token_auth(http, sim.base_url, context_nip=NIP, token=created["token"])
    assert detail(await status_of(http, sim.base_url, init)) == (450, "Token nieaktywny")


async def test_wrong_timestamp_is_450_token_time(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    found = await challenge(http, sim.base_url)
    public, key_id = await token_encryption_key(http, sim.base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, token, found["timestampMs"] - 1000), "publicKeyId": key_id}
    status, init = await post_token_auth(http, sim.base_url, body)
    assert status == 202
    assert detail(await status_of(http, sim.base_url, init)) == (450, "Nieprawidłowy czas tokena")


async def test_undecryptable_token_is_450_encryption(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": base64.b64encode(os.urandom(256)).decode()}
    status, init = await post_token_auth(http, sim.base_url, body)
    assert status == 202
    assert detail(await status_of(http, sim.base_url, init)) == (450, "Nieprawidłowe szyfrowanie tokena")


async def test_used_challenge_is_450_bad_challenge(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    found = await challenge(http, sim.base_url)
    public, key_id = await token_encryption_key(http, sim.base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, token, found["timestampMs"]), "publicKeyId": key_id}
    first = (await post_token_auth(http, sim.base_url, body))[1]
    assert (await status_of(http, sim.base_url, first))["code"] == 200
    status, second = await post_token_auth(http, sim.base_url, body)
    assert status == 202
    assert detail(await status_of(http, sim.base_url, second)) == (450, "Nieprawidłowe wyzwanie autoryzacyjne")


async def test_expired_challenge_is_450_bad_challenge(sim_factory, manual_clock, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(clock=manual_clock)
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    found = await challenge(http, sim.base_url)
    public, key_id = await token_encryption_key(http, sim.base_url)
    manual_clock.advance(601)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, token, found["timestampMs"]), "publicKeyId": key_id}
    init = (await post_token_auth(http, sim.base_url, body))[1]
    assert detail(await status_of(http, sim.base_url, init)) == (450, "Nieprawidłowe wyzwanie autoryzacyjne")


async def test_never_issued_challenge_is_400_21111(sim, http: aiohttp.ClientSession) -> None:
    public, key_id = await token_encryption_key(http, sim.base_url)
    body = {"challenge": "20250625-CR-2FDC223000-C2BFC98A9C-4E", "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, "x", 1), "publicKeyId": key_id}
    status, refused = await post_token_auth(http, sim.base_url, body)
    assert status == 400 and refused["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21111


async def test_unknown_public_key_is_21470(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    public, _ = await token_encryption_key(http, sim.base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": NIP},
            "encryptedToken": encrypt_token(public, "x", found["timestampMs"]),
            "publicKeyId": base64.b64encode(b"\0" * 32).decode()}
    status, refused = await post_token_auth(http, sim.base_url, body)
    assert status == 400 and refused["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21470
    async with http.get(f"{sim.base_url}/security/public-key-certificates") as resp:
        items = await resp.json()
    body["publicKeyId"] = next(i["publicKeyId"] for i in items if "SymmetricKeyEncryption" in i["usage"])
    status, refused = await post_token_auth(http, sim.base_url, body)       # a key of the other usage
    assert status == 400 and refused["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21470


async def test_token_loses_permissions_its_author_lost(sim, http: aiohttp.ClientSession) -> None:
    """A token carries token permissions ∩ the author's current ones; with none left: 415."""
    pesel_person = {"contextIdentifier": {"type": "Nip", "value": NIP},
                    "authorizedIdentifier": {"type": "Pesel", "value": "15062788702"},
                    "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"}]}
    async with http.post(f"{sim.base_url}/testdata/permissions", json=pesel_person) as resp:
        assert resp.status == 200
    cert, key = self_signed_certificate(pesel="15062788702")
    person = await xades_login(http, sim.base_url, context_nip=NIP, cert=cert, key=key)
    headers = {"Authorization": f"Bearer {person.access_token}"}
    async with http.post(f"{sim.base_url}/tokens", json={"permissions": ["InvoiceRead"], "description": "od osoby"},
                         headers=headers) as resp:
        created = await resp.json()
    for _ in range(2):
        async with http.get(f"{sim.base_url}/tokens/{created['referenceNumber']}", headers=headers) as resp:
            assert resp.status == 200
    revoke = {k: pesel_person[k] for k in ("contextIdentifier", "authorizedIdentifier")}
    async with http.post(f"{sim.base_url}/testdata/permissions/revoke", json=revoke) as resp:
        assert resp.status == 200
    with pytest.raises(AuthFailed) as failed:
        await token_login(http, sim.base_url, context_nip=NIP, token=created["token"])
    assert failed.value.status["code"] == 415


async def test_malformed_context_value_is_21405(sim, http: aiohttp.ClientSession) -> None:
    found = await challenge(http, sim.base_url)
    public, key_id = await token_encryption_key(http, sim.base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": "Nip", "value": "12345"},
            "encryptedToken": encrypt_token(public, "x", found["timestampMs"]), "publicKeyId": key_id}
    status, refused = await post_token_auth(http, sim.base_url, body)
    assert status == 400
    assert refused["exception"]["exceptionDetailList"][0]["exceptionCode"] == 21405
    assert "contextIdentifier.value" in refused["exception"]["exceptionDetailList"][0]["details"][0]
