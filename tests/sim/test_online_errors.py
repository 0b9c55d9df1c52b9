"""Synchronous refusals of online sessions over HTTP (PROTOCOL.md §4.1-4.5, §10.2): 21470, 21405,
415 sessions, 21173, 21402/21403 for both pairs, 21155, 21180 (closed, 12-hour expiry), 440 empty
close, 21418 paging, 21164/21178 lookups, and who may see a session (§9.2)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.ksef_auth import (
    access_token,
    owner_login,
    self_signed_certificate,
    token_encryption_key,
    xades_login,
)
from tests.support.online_flow import Online, expect, expect_error, sim_config
from tests.support.session_crypto import SessionKeys, aes_encrypt, b64, sha256_b64, wrap_key

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
UNKNOWN_SESSION = "20261122-SO-0000000000-0000000000-00"


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """This module's simulator: default settings, rate limits off (see online_flow.sim_config)."""
    return await sim_factory(config=sim_config())


async def _online(sim: Any, http: aiohttp.ClientSession, nip: str = NIP) -> Online:
    return Online(http, sim.base_url, await access_token(http, sim.base_url, nip))


async def test_unknown_public_key_id_is_21470(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open_raw()   # fetches the certificate
    assert online.public is not None
    encryption = online.keys.encryption(online.public, b64(hashlib.sha256(b"no such key").digest()))
    async with await online.open_raw(encryption=encryption) as resp:
        await expect_error(resp, 21470)
    _, token_key_id = await token_encryption_key(http, sim.base_url)     # a real key, but for KSeF tokens
    async with await online.open_raw(encryption=online.keys.encryption(online.public, token_key_id)) as resp:
        await expect_error(resp, 21470)


@pytest.mark.parametrize("form_code", [
    {"systemCode": "FA(3)", "schemaVersion": "1-0E", "value": "FA"},        # no space: not a listed value
    {"systemCode": "FA (3)", "schemaVersion": "1-0", "value": "FA"},
    {"systemCode": "PEF (3)", "schemaVersion": "2-1", "value": "PEF"},      # listed, but not simulated
])
async def test_form_code_must_be_a_listed_combination(form_code: dict[str, str], sim: Any,
                                                      http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    async with await online.open_raw(form_code=form_code) as resp:
        detail = await expect_error(resp, 21405)
    assert "formCode" in detail["details"][0] or "FA (3)" in detail["details"][0]


async def test_iv_must_be_16_bytes(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    online.keys = SessionKeys(iv=os.urandom(12))
    async with await online.open_raw() as resp:
        detail = await expect_error(resp, 21405)
    assert "initializationVector" in detail["details"][0]


@pytest.mark.parametrize("case", ["foreign-rsa-key", "short-aes-key"])
async def test_undecryptable_key_gives_session_status_415(case: str, sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open_raw()
    assert online.public is not None
    if case == "foreign-rsa-key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        wrapped = wrap_key(other, os.urandom(32))
    else:
        wrapped = wrap_key(online.public, os.urandom(16))
    encryption = {"encryptedSymmetricKey": b64(wrapped), "initializationVector": b64(os.urandom(16)),
                  "publicKeyId": online.key_id}
    await online.open(encryption=encryption)       # 201: the key is unwrapped after the session exists
    status = await online.status()
    assert status["status"]["code"] == 415
    assert status["status"]["description"] == "Błąd odszyfrowania dostarczonego klucza"
    async with online.send_raw(online.keys.send_body(SAMPLE)) as resp:
        await expect_error(resp, 21180)


async def test_unknown_session_is_21173(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    online.reference = UNKNOWN_SESSION
    # Worded as each operation's 400 table in openapi.json words it.
    found = f"Sesja o numerze referencyjnym {UNKNOWN_SESSION} nie została znaleziona."
    odnaleziona = found.replace("znaleziona", "odnaleziona")
    async with online.send_raw(online.keys.send_body(SAMPLE)) as resp:
        assert (await expect_error(resp, 21173))["details"] == [odnaleziona]
    for method, path, words in (("POST", f"/sessions/online/{UNKNOWN_SESSION}/close", odnaleziona),
                                ("GET", f"/sessions/{UNKNOWN_SESSION}", found),
                                ("GET", f"/sessions/{UNKNOWN_SESSION}/invoices", found),
                                ("GET", f"/sessions/{UNKNOWN_SESSION}/invoices/failed", found)):
        async with http.request(method, f"{sim.base_url}{path}", headers=online.headers) as resp:
            assert (await expect_error(resp, 21173))["details"] == [words], path


async def test_temporarily_unavailable_session_is_21184(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md §14.3: 400 21184 on send (fault switch `unavailable`); the invoice was not accepted."""
    sim = await sim_factory(config=sim_config(faults="unavailable=1"))
    online = await _online(sim, http)
    await online.open()
    for _ in range(2):                                          # the session stays unavailable
        async with online.send_raw(online.keys.send_body(SAMPLE)) as resp:
            detail = await expect_error(resp, 21184)
    assert detail["exceptionDescription"] == "Sesja tymczasowo niedostępna."
    assert detail["details"] == [f"Trwają prace serwisowe i sesja {online.reference} jest tymczasowo niedostępna. "
                                 "Spróbuj ponownie później lub otwórz nową sesję, aby wysłać kolejne faktury."]
    assert (await online.status())["invoiceCount"] == 0        # no invoice reference exists


async def test_sizes_and_hashes_of_both_pairs_are_checked(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    encrypted = aes_encrypt(online.keys.key, online.keys.iv, SAMPLE)
    wrong_hash = sha256_b64(b"something else")
    cases = [({"encryptedInvoiceSize": len(encrypted) + 16}, 21402),
             ({"encryptedInvoiceHash": wrong_hash}, 21403),
             ({"invoiceSize": len(SAMPLE) - 1}, 21402),
             ({"invoiceHash": wrong_hash}, 21403)]
    for overrides, code in cases:
        async with online.send_raw(online.keys.send_body(SAMPLE, **overrides)) as resp:
            detail = await expect_error(resp, code)
        assert ("encryptedInvoice" in detail["details"][0]) == any(k.startswith("encrypted") for k in overrides)
    status = await online.status()
    assert status["invoiceCount"] == 0          # nothing was accepted


async def test_iv_prefixed_ciphertext_is_not_what_ksef_expects(sim: Any, http: aiohttp.ClientSession) -> None:
    """PROTOCOL.md §13.1: a client that prepends the IV sends a different plaintext (decrypts to IV-garbage)."""
    online = await _online(sim, http)
    await online.open()
    encrypted = online.keys.iv + aes_encrypt(online.keys.key, online.keys.iv, SAMPLE)
    body = online.keys.send_body(SAMPLE, encryptedInvoiceContent=b64(encrypted), encryptedInvoiceSize=len(encrypted),
                                 encryptedInvoiceHash=sha256_b64(encrypted))
    async with online.send_raw(body) as resp:
        await expect_error(resp, 21402)


async def test_session_invoice_limit_is_21155(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    # PROTOCOL.md §11, §14.5: TEST lowers the context's session limits (10 000 invoices by default).
    limits = {"onlineSession": {"maxInvoices": 2, "maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3},
              "batchSession": {"maxInvoices": 2, "maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3},
              "collectiveIdentifier": {"maxInvoices": 500}}
    async with http.post(f"{sim.base_url}/testdata/limits/context/session", json=limits,
                         headers=online.headers) as resp:
        await expect(resp, 200)
    await online.open()
    for n in range(2):
        await online.send(SAMPLE.replace(b"FM2026/02/150", f"LIMIT/{n}".encode()))
    async with online.send_raw(online.keys.send_body(SAMPLE)) as resp:
        detail = await expect_error(resp, 21155)
    assert "2" in detail["details"][0]


async def test_closed_session_refuses_sending_and_closing(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    await online.submit(SAMPLE)
    await online.close()
    async with online.send_raw(online.keys.send_body(SAMPLE)) as resp:
        await expect_error(resp, 21180)
    async with http.post(f"{sim.base_url}/sessions/online/{online.reference}/close", headers=online.headers) as resp:
        await expect_error(resp, 21180)
    assert (await online.wait_session())["status"]["code"] == 200


async def test_closing_an_empty_session_cancels_it(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    await online.close()
    final = await online.wait_session()
    assert final["status"] == {"code": 440, "description": "Sesja anulowana", "details": ["Nie przesłano faktur"]}
    assert "upo" not in final


async def test_session_with_only_rejected_invoices_ends_445(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    assert (await online.submit(b"<not-xml"))["status"]["code"] == 430
    await online.close()
    final = await online.wait_session()
    assert final["status"]["code"] == 445 and final["failedInvoiceCount"] == 1


async def test_session_expires_after_12_hours(sim_factory: Any, manual_clock: ManualClock,
                                              http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config(), clock=manual_clock)
    online = await _online(sim, http)
    await online.open()
    first = await online.submit(SAMPLE)
    assert first["status"]["code"] == 200
    manual_clock.advance(12 * 3600 - 1)
    online.token = await access_token(http, sim.base_url, NIP)        # the first access token expired long ago
    await online.submit(SAMPLE.replace(b"FM2026/02/150", b"FM/LATE/1"))  # one second left: still open
    manual_clock.advance(1)
    async with online.send_raw(online.keys.send_body(SAMPLE.replace(b"FM2026/02/150", b"FM/LATE/2"))) as resp:
        detail = await expect_error(resp, 21180)
    assert "170" in detail["details"][0]
    final = await online.wait_session()       # closed automatically, UPO generated
    assert final["status"]["code"] == 200 and final["successfulInvoiceCount"] == 2


async def test_invoice_lists_page_with_continuation_tokens(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    sent = [await online.send(SAMPLE.replace(b"FM2026/02/150", f"PAGE/{n}".encode())) for n in range(12)]
    bad = [await online.send(b"<broken") for _ in range(11)]
    for ref in sent + bad:
        await online.wait_invoice(ref)
    seen: list[str] = []
    token: str | None = None
    while True:
        headers = {**online.headers, **({"x-continuation-token": token} if token else {})}
        async with http.get(f"{sim.base_url}/sessions/{online.reference}/invoices", params={"pageSize": "10"},
                            headers=headers) as resp:
            page = await expect(resp, 200)
        seen += [i["referenceNumber"] for i in page["invoices"]]
        token = page.get("continuationToken")
        if not token:
            break
    assert seen == sent + bad                                    # ordinal order, nothing lost or repeated
    async with http.get(f"{sim.base_url}/sessions/{online.reference}/invoices/failed", params={"pageSize": "10"},
                        headers=online.headers) as resp:
        failed = await expect(resp, 200)
    assert [i["referenceNumber"] for i in failed["invoices"]] == bad[:10] and failed["continuationToken"]
    async with http.get(f"{sim.base_url}/sessions/{online.reference}/invoices/failed",
                        headers={**online.headers, "x-continuation-token": failed["continuationToken"]}) as resp:
        rest = await expect(resp, 200)
    assert [i["referenceNumber"] for i in rest["invoices"]] == bad[10:] and "continuationToken" not in rest
    async with http.get(f"{sim.base_url}/sessions/{online.reference}/invoices",
                        headers={**online.headers, "x-continuation-token": "not a token!"}) as resp:
        await expect_error(resp, 21418)


async def test_unknown_invoice_and_missing_upo(sim_factory: Any, http: aiohttp.ClientSession) -> None:

    sim = await sim_factory(config=sim_config(processing_delay_s=0.5))
    online = await _online(sim, http)
    await online.open()
    ref = await online.send(SAMPLE)
    base = f"{sim.base_url}/sessions/{online.reference}"
    async with http.get(f"{base}/invoices/{ref}/upo", headers=online.headers) as resp:
        await expect_error(resp, 21178)      # still processing: no UPO yet
    other = ref[:-2] + ("00" if ref[-2:] != "00" else "01")
    async with http.get(f"{base}/invoices/{other}", headers=online.headers) as resp:
        await expect_error(resp, 21164)
    number, page = "9999999999-20260101-000000000000-00", "20261122-EU-0000000000-0000000000-00"
    async with http.get(f"{base}/invoices/ksef/{number}/upo", headers=online.headers) as resp:
        assert (await expect_error(resp, 21178))["details"] == [
            f"UPO o numerze KSeF {number} i numerze referencyjnym sesji {online.reference} nie zostało znalezione."]
    async with http.get(f"{base}/upo/{page}", headers=online.headers) as resp:
        assert (await expect_error(resp, 21178))["details"] == [
            f"UPO o numerze referencyjnym {page} dla sesji {online.reference} nie zostało znalezione."]


async def test_problem_details_format_on_request(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    async with http.get(f"{sim.base_url}/sessions/{UNKNOWN_SESSION}",
                        headers={**online.headers, "X-Error-Format": "problem-details"}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 400 and resp.content_type == "application/problem+json"
    assert body["errors"][0]["code"] == 21173


async def _grant(http: aiohttp.ClientSession, base_url: str, nip: str, pesel: str, permissions: list[str]) -> None:
    body = {"contextIdentifier": {"type": "Nip", "value": nip},
            "authorizedIdentifier": {"type": "Pesel", "value": pesel},
            "permissions": [{"permissionType": p, "description": "ksefd tests"} for p in permissions]}
    async with http.post(f"{base_url}/testdata/permissions", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_invoice_write_sees_own_sessions_introspection_sees_all(sim: Any, http: aiohttp.ClientSession) -> None:
    owner = Online(http, sim.base_url, (await owner_login(http, sim.base_url, NIP)).access_token)
    await owner.open()
    await _grant(http, sim.base_url, NIP, "80010112345", ["InvoiceWrite"])
    await _grant(http, sim.base_url, NIP, "80010154321", ["Introspection"])
    writer_cert, writer_key = self_signed_certificate(pesel="80010112345")
    writer = await xades_login(http, sim.base_url, context_nip=NIP, cert=writer_cert, key=writer_key)
    auditor_cert, auditor_key = self_signed_certificate(pesel="80010154321")
    auditor = await xades_login(http, sim.base_url, context_nip=NIP, cert=auditor_cert, key=auditor_key)
    writer_online = Online(http, sim.base_url, writer.access_token)
    await writer_online.open()
    listing: dict[str, list[str]] = {}
    for name, token in (("owner", owner.token), ("writer", writer.access_token), ("auditor", auditor.access_token)):
        async with http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online"},
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            listing[name] = sorted(s["referenceNumber"] for s in (await expect(resp, 200))["sessions"])
    both = sorted([owner.reference, writer_online.reference])
    assert listing == {"owner": both, "writer": [writer_online.reference], "auditor": both}
    async with http.get(f"{sim.base_url}/sessions/{owner.reference}", headers=writer_online.headers) as resp:
        await expect_error(resp, 21173)
    async with writer_online.send_raw(writer_online.keys.send_body(SAMPLE)) as resp:
        assert resp.status == 202
    other = await _online(sim, http, "1111111111")      # another context never sees them
    async with http.get(f"{sim.base_url}/sessions/{owner.reference}", headers=other.headers) as resp:
        await expect_error(resp, 21173)


async def test_session_list_filters(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    open_ref = online.reference
    await online.open()
    await online.close()
    closed_ref = online.reference
    await online.wait_session()

    async def refs(**params: str) -> list[str]:
        async with http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online", **params},
                            headers=online.headers) as resp:
            return [s["referenceNumber"] for s in (await expect(resp, 200))["sessions"]]
    assert await refs() == [closed_ref, open_ref]                  # newest first
    assert await refs(statuses="InProgress") == [open_ref]
    assert await refs(statuses="Cancelled") == [closed_ref]
    assert await refs(referenceNumber=open_ref) == [open_ref]
    assert await refs(dateClosedFrom="2020-01-01T00:00:00Z") == [closed_ref]
    assert await refs(sessionType="Batch") == []
    async with http.get(f"{sim.base_url}/sessions", params={"sessionType": "Online"}, headers=online.headers) as resp:
        listing = await expect(resp, 200)
    closed, opened = listing["sessions"]
    assert "continuationToken" not in listing                # the last page carries none (not even null)
    assert await refs(dateCreatedFrom=closed["dateCreated"]) == [closed_ref]          # bounds are inclusive
    assert await refs(dateCreatedTo=opened["dateCreated"]) == [open_ref]
    assert await refs(dateModifiedFrom=closed["dateUpdated"]) == [closed_ref]
    assert await refs(dateModifiedTo=opened["dateUpdated"], statuses="Cancelled") == []
    assert await refs(statuses="Cancelled", dateCreatedTo=closed["dateCreated"]) == [closed_ref]


@pytest.mark.sends_invalid_requests
async def test_paging_parameters_are_validated(sim: Any, http: aiohttp.ClientSession) -> None:
    online = await _online(sim, http)
    await online.open()
    for size in ("9", "1001", "ten"):
        async with http.get(f"{sim.base_url}/sessions/{online.reference}/invoices", params={"pageSize": size},
                            headers=online.headers) as resp:
            assert "pageSize" in (await expect_error(resp, 21405))["details"][0]
    async with http.get(f"{sim.base_url}/sessions", headers=online.headers) as resp:
        assert "sessionType" in (await expect_error(resp, 21405))["details"][0]
