"""The client's authentication against the simulator over HTTP (issue #4 item 3)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from ksefd.i18n import render
from ksefd.ksef.auth import AuthOptions, ContextIdentifier, Tokens
from ksefd.ksef.auth_messages import explain
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import CertificateCredentials, KsefToken
from ksefd.ksef.environments import DEMO, PROD, TEST
from ksefd.ksef.errors import AuthenticationFailed, AuthenticationPending, CredentialsError, Forbidden, KsefError
from ksefd.ksef.texts import english
from ksefd.ksef.transport import RetryPolicy
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.support.ksef_auth import create_ksef_token, owner_login, self_signed_certificate

NIP = "5265877635"
OTHER_NIP = "7010002137"
FAST = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


@pytest.fixture
def client_factory(sim: Any, ksef_clients: Callable[..., KsefClient]) -> Callable[..., KsefClient]:
    """Clients on the default simulator unless another base URL is given."""
    def make(base_url: str | None = None, **kwargs: Any) -> KsefClient:
        return ksef_clients(base_url or sim.base_url, **kwargs)
    return make


async def _identity(ctx: Any) -> dict[str, Any]:
    """What the simulator thinks of our access token: GET /tokens needs a valid ContextToken."""
    response = await ctx.request("GET", "/tokens", query={"pageSize": "10"}, expect=(200,))
    result: dict[str, Any] = response.json()
    return result


async def test_token_with_trailing_space_and_zero_width_character_authenticates(
        sim: Any, http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
    pasted = "\ufeff" + token[:20] + "\u200b" + token[20:] + " \u00a0\n"
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(pasted))
    await ctx.authenticate()
    assert ctx.auth.tokens is not None
    await _identity(ctx)


async def test_rsa_and_ec_certificates_authenticate(sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    client = client_factory()
    for key_type in ("rsa", "ec"):
        cert, key = self_signed_certificate(nip=NIP, key_type=key_type)
        ctx = client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key))
        await ctx.authenticate()
        await _identity(ctx)


async def test_one_certificate_into_two_company_contexts(
        sim: Any, http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    person = CertificateCredentials(cert, key)
    # The person (NIP owner) gets a permission in a second company's context (ZAW-FA, PROTOCOL.md §11).
    async with http.post(f"{sim.base_url}/testdata/permissions", json={
        "contextIdentifier": {"type": "Nip", "value": OTHER_NIP},
        "authorizedIdentifier": {"type": "Nip", "value": NIP},
        "permissions": [{"permissionType": "InvoiceWrite", "description": "ksefd test grant"}]}) as resp:
        assert resp.status == 200, await resp.text()
    client = client_factory()
    own = client.context(ContextIdentifier.nip(NIP), person)
    other = client.context(ContextIdentifier.nip(OTHER_NIP), person)
    await own.authenticate()
    await other.authenticate()
    assert own is not other and own.auth.tokens and other.auth.tokens
    assert own.auth.tokens.access_token != other.auth.tokens.access_token
    assert own.auth.tokens.reference_number != other.auth.tokens.reference_number


async def test_access_token_expiry_mid_run_is_refreshed_transparently(
        sim_factory: Callable[..., Any], http: aiohttp.ClientSession,
        client_factory: Callable[..., KsefClient]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(), clock=clock)
    cert, key = self_signed_certificate(nip=NIP)
    client = client_factory(sim.base_url, clock=clock)
    ctx = client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key))
    await _identity(ctx)
    first = ctx.auth.tokens
    assert first is not None
    clock.advance((first.access_valid_until - clock.now()).total_seconds() - 90)  # still valid for 90 s: kept
    await _identity(ctx)
    assert ctx.auth.tokens is first
    clock.advance(60)                      # 30 s left, inside the refresh margin: refreshed before it expires
    await _identity(ctx)
    early = ctx.auth.tokens
    assert early is not None and early.access_token != first.access_token
    assert early.reference_number == first.reference_number
    clock.advance((early.access_valid_until - clock.now()).total_seconds() + 1)   # the access token has expired
    await _identity(ctx)
    second = ctx.auth.tokens
    assert second is not None
    assert second.access_token not in (first.access_token, early.access_token)
    assert second.reference_number == first.reference_number          # refreshed, not a new authentication
    assert second.refresh_token == first.refresh_token                 # refresh tokens are not rotated
    clock.advance((first.refresh_valid_until - clock.now()).total_seconds() + 1)  # the refresh token ended too
    await _identity(ctx)
    third = ctx.auth.tokens
    assert third is not None and third.reference_number != first.reference_number   # full re-authentication


async def test_401_leads_to_full_reauthentication(sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    creds = CertificateCredentials(cert, key)
    # Tokens KSeF no longer accepts (PROTOCOL.md §3.5: it may reject early), as a restarted daemon loads them.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    store = MemoryTokenStore()
    stale = Tokens("not-a-valid-jwt", later, "not-a-valid-refresh-jwt", later, "20260101-AU-0000000000-0000000000-00")
    await store.save(f"Nip:{NIP}|cert:{creds.fingerprint}", stale)
    ctx = client_factory(token_store=store).context(ContextIdentifier.nip(NIP), creds)
    await _identity(ctx)                                           # 401 -> authenticate again -> the call succeeds
    fresh = ctx.auth.tokens
    assert fresh is not None and fresh.reference_number != stale.reference_number
    assert next(iter(store.saved.values())) is fresh


async def test_recovers_from_21470_after_token_key_rotation(
        sim: Any, http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite"])
    client = client_factory()
    old = (await client.public_keys.get("KsefTokenEncryption")).public_key_id    # cached before the rotation
    async with http.post(f"{sim.root_url}/sim/keys/rotate", json={"usage": "KsefTokenEncryption"}) as resp:
        assert resp.status == 200                                     # emergency rotation: old id withdrawn
        new = (await resp.json())["publicKeyId"]
    assert new != old
    ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
    await ctx.authenticate()
    assert (await client.public_keys.get("KsefTokenEncryption")).public_key_id == new


async def test_missing_permissions_403_lists_required_and_present(
        sim: Any, http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
    with pytest.raises(Forbidden) as caught:
        await ctx.online().open()
    error = caught.value
    assert error.reason_code == "missing-permissions"
    assert "InvoiceWrite" in error.required_permissions and error.present_permissions == ["InvoiceRead"]
    assert "needs one of" in str(error) and "InvoiceWrite" in str(error) and "hold InvoiceRead" in str(error)


async def test_415_no_permission_in_context(sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(OTHER_NIP), CertificateCredentials(cert, key))
    with pytest.raises(AuthenticationFailed) as caught:
        await ctx.authenticate()
    assert caught.value.code == 415
    assert f"no permission in context Nip {OTHER_NIP}" in str(caught.value)


async def test_450_wrong_token_mentions_environments(sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    fake = f"20251010-EC-1DCE3E3000-12ECB5B36E-45|nip-{NIP}|" + "ab" * 32
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(fake))
    with pytest.raises(AuthenticationFailed) as caught:
        await ctx.authenticate()
    assert caught.value.code == 450
    assert "tokens from DEMO or TEST do not work on PROD" in str(caught.value)
    assert str(caught.value).count("do not work on") == 2       # the one sentence of the rule, not twice
    prod = client_factory(env=PROD)          # PROD's wording, the simulator's URL
    assert prod.environment.is_production and prod.environment.api_url == sim.base_url
    with pytest.raises(AuthenticationFailed) as on_prod:
        await prod.context(ContextIdentifier.nip(NIP), KsefToken.parse(fake)).authenticate()
    assert "DEMO and TEST tokens do not work on PROD" in str(on_prod.value)
    assert "tokens from DEMO or TEST" not in str(on_prod.value)          # not said a second time in other words


async def test_450_revoked_token(sim: Any, http: aiohttp.ClientSession,
                                 client_factory: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite"])
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
    await ctx.request("DELETE", "/tokens/{referenceNumber}",
                      params={"referenceNumber": KsefToken.parse(token).reference_number}, expect=(204,))
    for _ in range(3):   # Revoking -> Revoked once read (the simulator's deterministic status machine)
        await ctx.request("GET", "/tokens/{referenceNumber}",
                          params={"referenceNumber": KsefToken.parse(token).reference_number}, expect=(200,))
    fresh = client_factory().context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
    with pytest.raises(AuthenticationFailed) as caught:
        await fresh.authenticate()
    assert caught.value.code == 450 and "revoked" in str(caught.value)


async def test_450_token_from_another_context(sim: Any, http: aiohttp.ClientSession,
                                              client_factory: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite"])
    client = client_factory()
    ctx = client.context(ContextIdentifier.nip(OTHER_NIP), KsefToken.parse(token))
    with pytest.raises(AuthenticationFailed) as caught:
        await ctx.authenticate()
    assert caught.value.code == 450
    assert f"cannot be used in context Nip {OTHER_NIP}" in str(caught.value) and f"nip-{NIP}" in str(caught.value)


async def test_460_certificate_chain_not_trusted(sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    client = client_factory(auth_options=AuthOptions(poll_first=0.01, poll_max=0.05, verify_certificate_chain=True))
    with pytest.raises(AuthenticationFailed) as caught:
        await client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).authenticate()
    assert caught.value.code == 460
    assert "chain" in str(caught.value) and "KSeF certificate" in str(caught.value)


async def test_certificate_without_identifiers_authenticates_by_fingerprint(
        sim: Any, http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate()                     # no TINPL/PNOPL/VATPL: certificateFingerprint
    creds = CertificateCredentials(cert, key)
    async with http.post(f"{sim.base_url}/testdata/permissions", json={
        "contextIdentifier": {"type": "Nip", "value": NIP},
        "authorizedIdentifier": {"type": "Fingerprint", "value": creds.fingerprint},
        "permissions": [{"permissionType": "InvoiceRead", "description": "ksefd fingerprint grant"}]}) as resp:
        assert resp.status == 200, await resp.text()
    ctx = client_factory().context(ContextIdentifier.nip(NIP), creds)
    await ctx.authenticate()


class MemoryTokenStore:
    def __init__(self) -> None:
        self.saved: dict[str, Tokens] = {}

    async def load(self, key: str) -> Tokens | None:
        return self.saved.get(key)

    async def save(self, key: str, tokens: Tokens) -> None:
        self.saved[key] = tokens

    async def clear(self, key: str) -> None:
        self.saved.pop(key, None)


async def test_token_store_lets_a_restarted_client_reuse_its_tokens(
        sim: Any, client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP)
    store = MemoryTokenStore()
    first = client_factory(token_store=store).context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key))
    await _identity(first)
    assert list(store.saved) == [f"Nip:{NIP}|cert:{CertificateCredentials(cert, key).fingerprint}"]
    saved = next(iter(store.saved.values()))
    assert "eyJ" not in repr(saved)                                  # tokens never show in repr/logs
    second = client_factory(token_store=store).context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key))
    await _identity(second)
    assert second.auth.tokens is saved                               # no new authentication


def test_context_identifier_validation() -> None:
    assert ContextIdentifier.parse("Nip:5265877635") == ContextIdentifier.nip("5265877635")
    assert ContextIdentifier.parse("5265877635").key == "Nip:5265877635"
    assert ContextIdentifier("InternalId", "5265877635-12345").as_json() == {"type": "InternalId",
                                                                              "value": "5265877635-12345"}
    with pytest.raises(KsefError, match="Nip context '526587763' is malformed: expected 10 digits") as caught:
        ContextIdentifier.nip("526587763")
    assert render(caught.value.words, "pl").endswith("ma błędną postać: oczekiwano 10 cyfr")     # in their words
    with pytest.raises(KsefError, match="context type 'Pesel' is unknown"):
        ContextIdentifier("Pesel", "12345678901")


async def test_expired_certificate_is_refused_before_any_request(client_factory: Callable[..., KsefClient]) -> None:
    cert, key = self_signed_certificate(nip=NIP, valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), valid_days=30)
    client = client_factory("http://127.0.0.1:1/v2")                # nothing listens there: no request may be made
    with pytest.raises(CredentialsError, match="expired on 2020-01-31"):
        await client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).authenticate()


async def test_450_inactive_token(sim_factory: Callable[..., Any], http: aiohttp.ClientSession,
                                  client_factory: Callable[..., KsefClient]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(), clock=clock)
    owner = await owner_login(http, sim.base_url, NIP)
    async with http.post(f"{sim.base_url}/tokens", json={"permissions": ["InvoiceWrite"], "description": "pending"},
                         headers={"Authorization": f"Bearer {owner.access_token}"}) as resp:
        assert resp.status == 202
        created = await resp.json()
    client = client_factory(sim.base_url, clock=clock)
    with pytest.raises(AuthenticationFailed) as caught:        # still Pending: nobody read it, no time passed
        await client.context(ContextIdentifier.nip(NIP), KsefToken.parse(created["token"])).authenticate()
    assert caught.value.code == 450 and "not active" in str(caught.value)


@pytest.mark.parametrize(("code", "details", "env", "expected"), [
    (415, ["Brak przypisanych uprawnień"], TEST, "no permission in context Nip 5265877635"),
    (450, ["Nieprawidłowy token"], TEST, "tokens from DEMO or TEST do not work on PROD"),
    (450, ["Nieprawidłowy token"], PROD, "DEMO and TEST tokens do not work on PROD"),
    (450, ["Token unieważniony"], TEST, "the KSeF token was revoked"),
    (450, ["Token nieaktywny"], TEST, "the KSeF token is not active"),
    (450, ["Token nie może być użyty w kontekście 5265877635"], TEST, "cannot be used in context Nip 5265877635"),
    (450, ["Nieprawidłowe wyzwanie autoryzacyjne"], TEST, "challenge was rejected"),
    (450, ["Nieprawidłowy czas tokena"], TEST, "check that this machine's clock is right"),
    (450, ["Nieprawidłowe szyfrowanie tokena"], TEST, "could not be read by KSeF"),
    (460, ["Niezaufany łańcuch certyfikatów"], DEMO, "self-signed certificates are accepted only on TEST"),
    (460, ["Certyfikat unieważniony"], TEST, "revoked or suspended"),
    (460, ["Nieważny certyfikat"], TEST, "check its validity dates"),
    (470, [], TEST, "deceased"),
    (480, [], TEST, "contact the Ministry of Finance"),
    (550, [], TEST, "it will be retried"),
])
def test_auth_failure_messages(code: int, details: list[str], env: Any, expected: str) -> None:
    text = english(explain(code, "Opis KSeF", details, context="Nip 5265877635", identity="Nip 5265877635",
                           environment=env))                          # message ids (texts.py), English for logs
    assert expected in text
    assert f"[KSeF {code}: Opis KSeF" in text                          # KSeF's own words are kept


def test_a_pasted_token_string_is_checked_before_any_request() -> None:
    client = KsefClient("test", base_url="http://127.0.0.1:1/v2")
    with pytest.raises(CredentialsError, match=re.escape("the token has 2 parts separated by '|', expected 3")):
        client.context("Nip:5265877635", "20251010-EC-1DCE3E3000-12ECB5B36E-45|" + "ab" * 32)
    ctx = client.context("5265877635", f" 20251010-EC-1DCE3E3000-12ECB5B36E-45|nip-{NIP}|{'ab' * 32}\n")
    assert ctx.context == ContextIdentifier.nip(NIP)


async def test_polls_with_backoff_until_the_status_leaves_100(
        sim_factory: Callable[..., Any], client_factory: Callable[..., KsefClient]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(auth_processing_delay_s=20), clock=clock)   # e.g. OCSP on PROD
    waits: list[float] = []

    async def sleep(seconds: float) -> None:           # time passes only when the client waits
        waits.append(seconds)
        clock.advance(seconds)

    cert, key = self_signed_certificate(nip=NIP)
    options = AuthOptions(poll_first=0.5, poll_factor=2, poll_max=4, poll_budget=60)
    client = client_factory(sim.base_url, clock=clock, sleep=sleep, auth_options=options)
    await client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).authenticate()
    assert waits[:4] == [0.5, 1, 2, 4] and set(waits[4:]) == {4} and 20 <= sum(waits) < 24
    impatient = client_factory(sim.base_url, clock=clock, sleep=sleep,
                               auth_options=AuthOptions(poll_first=0.5, poll_max=1, poll_budget=5))
    with pytest.raises(AuthenticationPending, match="still in progress after 5 s"):
        await impatient.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).authenticate()


async def test_public_keys_are_cached_and_fetched_again_when_old(
        sim_factory: Callable[..., Any], http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient],
        debug_logs: list[Any]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(), clock=clock)
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite"])
    client = client_factory(sim.base_url, clock=clock)

    def fetches() -> int:
        return sum(1 for e in debug_logs if e["event"] == "ksef.response"
                   and e["path"] == "/security/public-key-certificates")

    await client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token)).authenticate()   # token key
    cert, key = self_signed_certificate(nip=NIP)
    await client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).online().open()  # AES key
    assert fetches() == 1                                    # one GET served both usages and both contexts
    clock.advance(7 * 3600)                                  # older than PublicKeys.max_age (6 h): asked again
    await client.public_keys.get("SymmetricKeyEncryption")
    assert fetches() == 2


async def test_an_authentication_step_lost_to_a_5xx_starts_the_flow_again(
        sim_factory: Callable[..., Any], http: aiohttp.ClientSession, client_factory: Callable[..., KsefClient],
        debug_logs: list[Any]) -> None:
    """Issue #4 item 8: the single-use steps (ksef-token with its challenge, redeem) are never re-POSTed inside the
    request; the whole flow starts over with a new challenge, a bounded number of times (AuthOptions.attempts)."""
    sim = await sim_factory(config=SimConfig())
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite"])
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "5xx=0.35,seed=4"}) as resp:
        assert resp.status == 200                                    # CDN errors before KSeF sees a request
    client = client_factory(sim.base_url, retry=RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.002),
                            auth_options=AuthOptions(poll_first=0.01, poll_max=0.05, attempts=8), sleep=_no_wait)
    await client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token)).authenticate()
    posts = [e["path"] for e in debug_logs if e["event"] == "ksef.response" and e["method"] == "POST"]
    flows = "".join({"/auth/challenge": "c", "/auth/ksef-token": "t", "/auth/token/redeem": "r"}[p] for p in posts)
    assert "tt" not in flows and "rr" not in flows and "ct" in flows     # each token POST has its own challenge
    assert any(e["event"] == "ksef.auth_retry" for e in debug_logs), "no step failed with this seed; pick another"


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)
