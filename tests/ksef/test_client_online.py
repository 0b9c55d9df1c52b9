"""The client's online sessions against the simulator over HTTP (issue #4 item 4, PROTOCOL.md §4, §14.3)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import structlog.testing
from lxml import etree

from ksefd.clock import warsaw_date
from ksefd.i18n import render
from ksefd.ksef.client import KsefContext
from ksefd.ksef.crypto import sha256_b64
from ksefd.ksef.errors import KsefException, OutcomeUnknown
from ksefd.ksef.models import SessionInvoice, SessionStatus
from ksefd.ksef.online import OnlineOptions
from ksefd.samples import make_invoice
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
UPO_NS = "{http://upo.schematy.mf.gov.pl/KSeF/v4-3}"


def invoice(number: int) -> bytes:
    """The sample with its own P_2: (NIP, RodzajFaktury, P_2) is the duplicate key (PROTOCOL.md §4.2)."""
    return SAMPLE.replace(b"<P_2>FV2026/02/150</P_2>", f"<P_2>FV/KSEFD/{number}</P_2>".encode())


async def wait_invoice(ctx: KsefContext, session: str, reference: str) -> SessionInvoice:
    for _ in range(500):
        found = await ctx.sessions.invoice(session, reference)
        if found.is_final:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"invoice {reference} still processing")


async def wait_session(ctx: KsefContext, session: str) -> SessionStatus:
    for _ in range(500):
        status = await ctx.sessions.status(session)
        if status.status.code not in (100, 150, 170):
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"session {session} still in progress")


def upo_numbers(xml: bytes) -> list[str]:
    root = etree.fromstring(xml)
    return [e.text or "" for e in root.iter(f"{UPO_NS}NumerKSeFDokumentu")]


async def test_full_online_session_with_upos(sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    sender = ctx.online()
    sent = [await sender.send(invoice(n)) for n in range(11)]
    session = sent[0].session_reference_number
    assert {s.session_reference_number for s in sent} == {session}
    assert sent[0].invoice_hash == sha256_b64(invoice(0)) and sent[0].invoice_size == len(invoice(0))
    assert sent[0].reference_number[9:11] == "EE"

    done = [await wait_invoice(ctx, session, s.reference_number) for s in sent]
    assert all(d.status.code == 200 and d.ksef_number for d in done), [d.status for d in done]
    assert [d.invoice_hash for d in done] == [s.invoice_hash for s in sent]

    pages = [page async for page in ctx.sessions.invoice_pages(session, page_size=10)]
    assert [len(p.invoices) for p in pages] == [10, 1]          # followed the continuation token
    assert {i.reference_number for p in pages for i in p.invoices} == {s.reference_number for s in sent}

    first = done[0]
    assert first.ksef_number is not None
    by_reference = await ctx.sessions.invoice_upo(session, first.reference_number)
    by_number = await ctx.sessions.invoice_upo_by_ksef_number(session, first.ksef_number)
    assert upo_numbers(by_reference) == upo_numbers(by_number) == [first.ksef_number]
    assert first.upo_download_url
    assert upo_numbers(await ctx.sessions.download_presigned_upo(first.upo_download_url)) == [first.ksef_number]

    assert await ctx.close() == [session]
    status = await wait_session(ctx, session)
    assert status.status.code == 200 and status.invoice_count == 11
    upo_pages = await ctx.sessions.session_upo(session, status)
    assert len(upo_pages) >= 1
    numbers = [n for _, xml in upo_pages for n in upo_numbers(xml)]
    assert sorted(numbers) == sorted(d.ksef_number or "" for d in done)


async def test_session_cap_opens_a_fresh_session_and_closes_the_old(
        sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim, online_options=OnlineOptions(max_invoices=2))
    sent, keys = [], []
    for n in range(3):
        sent.append(await ctx.online().send(invoice(100 + n)))
        current = ctx.online().current
        assert current is not None
        keys.append((current.key.key, current.key.iv))
    sessions = [s.session_reference_number for s in sent]
    assert sessions[0] == sessions[1] != sessions[2]
    assert keys[0] == keys[1] and keys[1][0] != keys[2][0] and keys[1][1] != keys[2][1]   # a fresh key and IV
    closed = await wait_session(ctx, sessions[0])           # closed by the sender once it was full
    assert closed.status.code == 200 and closed.invoice_count == 2


async def test_session_near_12_hours_is_replaced(sim_factory: Any, token_context: Callable[..., Any]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    ctx = await token_context(sim, clock=clock)
    first = await ctx.online().send(invoice(200))
    clock.advance(11 * 3600 + 50 * 60)                      # 10 minutes before validUntil (margin 15 min)
    second = await ctx.online().send(invoice(201))
    assert second.session_reference_number != first.session_reference_number
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200


async def test_send_refused_by_a_dead_session_goes_to_a_new_one(
        sim_factory: Any, token_context: Callable[..., Any]) -> None:
    """21180 (session closed behind our back) takes the same path as 21184: a new session, the same bytes."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    first = await ctx.online().send(invoice(300))
    await ctx.request("POST", "/sessions/online/{referenceNumber}/close",
                      params={"referenceNumber": first.session_reference_number}, expect=(204,))
    second = await ctx.online().send(invoice(301))
    assert second.session_reference_number != first.session_reference_number
    assert second.invoice_hash == sha256_b64(invoice(301))
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200


async def test_21470_on_session_open_after_key_rotation(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    stale = await ctx.client.public_keys.get("SymmetricKeyEncryption")     # cached before the rotation
    async with http.post(f"{sim.root_url}/sim/keys/rotate", json={"usage": "SymmetricKeyEncryption"}) as resp:
        assert resp.status == 200
        new = (await resp.json())["publicKeyId"]
    assert new != stale.public_key_id
    sent = await ctx.online().send(invoice(400))                           # 21470, re-fetch, wrap again
    assert ctx.online().current is not None and ctx.online().current.public_key_id == new
    assert (await wait_invoice(ctx, sent.session_reference_number, sent.reference_number)).status.code == 200


async def set_faults(http: aiohttp.ClientSession, sim: Any, **body: Any) -> None:
    """The simulator's fault switches (ksefd/sim/faults.py) through its /sim/faults control endpoint."""
    async with http.post(f"{sim.root_url}/sim/faults", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def hashes_in(ctx: KsefContext, session: str) -> list[str]:
    return [i.invoice_hash for i in await ctx.sessions.invoices(session)]


async def test_lost_answer_to_a_send_is_outcome_unknown_and_never_resent(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    first = await ctx.online().send(invoice(499))
    await set_faults(http, sim, spec="drop=1")                 # KSeF processes the send, the answer is lost
    with pytest.raises(OutcomeUnknown) as caught:
        await ctx.online().send(invoice(500))
    await set_faults(http, sim)
    lost = caught.value
    assert lost.invoice_hash == sha256_b64(invoice(500)) and lost.session_reference == first.session_reference_number
    assert lost.session_reference is not None
    # Not re-POSTed: every attempt would have been processed (and its answer dropped), so KSeF holds it once.
    # The daemon resolves it the same way: the invoice is in the session, found by its hash.
    assert await hashes_in(ctx, lost.session_reference) == [first.invoice_hash, lost.invoice_hash]
    nxt = await ctx.online().send(invoice(501))                # the session is still usable
    assert nxt.session_reference_number == lost.session_reference


async def test_21184_moves_the_same_bytes_to_a_new_session(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    first = await ctx.online().send(invoice(600))
    old = first.session_reference_number
    await set_faults(http, sim, unavailableSessions=[old])    # maintenance hits the open session (§14.3)
    second = await ctx.online().send(invoice(601))
    assert second.session_reference_number != old
    assert second.invoice_hash == sha256_b64(invoice(601)) and second.invoice_size == len(invoice(601))
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200 and done.invoice_hash == second.invoice_hash
    # The refused send left nothing in the old session; the old session was closed (its first invoice keeps
    # its UPO) and is not used again.
    assert await hashes_in(ctx, old) == [first.invoice_hash]
    assert (await wait_session(ctx, old)).status.code == 200
    third = await ctx.online().send(invoice(602))
    assert third.session_reference_number == second.session_reference_number


async def test_a_send_refused_with_21184_by_every_session_gives_up_after_session_attempts(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", faults="unavailable=1"))
    ctx = await token_context(sim, online_options=OnlineOptions(session_attempts=3))
    with structlog.testing.capture_logs() as logs, pytest.raises(KsefException) as caught:
        await ctx.online().send(invoice(650))
    assert caught.value.code == 21184 and caught.value.retryable          # the daemon defers it
    opened = [e["session"] for e in logs if e["event"] == "ksef.online_opened"]
    assert len(opened) == 3 == len(set(opened))


async def test_a_ksef_exception_gives_ksefs_words_as_they_came_and_ksefds_hint_in_the_readers_language(
        sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", faults="unavailable=1"))
    ctx = await token_context(sim, online_options=OnlineOptions(session_attempts=1))
    with pytest.raises(KsefException) as caught:
        await ctx.online().send(invoice(660))
    exc = caught.value
    english_hint = "the session is temporarily unavailable; open a new session and send the invoice there"
    assert english_hint in str(exc) and "21184" in str(exc)           # the log stays English
    polish = render(exc.words, "pl")
    assert polish.startswith("KSeF odpowiedział na POST ") and "kodem HTTP 400: 21184 " in polish
    assert "(sesja jest chwilowo niedostępna; otwórz nową sesję i wyślij fakturę w niej)" in polish
    assert english_hint not in polish
    assert render(exc.words, "en") == str(exc)


async def test_concurrent_sends_share_sessions_within_the_cap(
        sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim, online_options=OnlineOptions(max_invoices=3))
    sent = await asyncio.gather(*(ctx.online().send(invoice(700 + n)) for n in range(7)))
    per_session: dict[str, int] = {}
    for s in sent:
        per_session[s.session_reference_number] = per_session.get(s.session_reference_number, 0) + 1
    assert sorted(per_session.values()) == [1, 3, 3]
    full = [ref for ref, count in per_session.items() if count == 3]
    for ref in full:                                         # full sessions are closed once their sends finish
        assert (await wait_session(ctx, ref)).status.code == 200


async def test_context_gives_the_other_senders(sim: Any, token_context: Callable[..., Any]) -> None:
    ctx = await token_context(sim)
    assert ctx.batch().auth is ctx.auth and ctx.exporter().auth is ctx.auth and ctx.receiver().auth is ctx.auth


async def test_feature_header_asks_for_prd_like_nip_checks(
        sim_factory: Any, token_context: Callable[..., Any]) -> None:
    """X-KSeF-Feature: subject-identifier-validation (§14.3, §14.7 point 7) reaches KSeF: with it a buyer NIP
    with a wrong checksum is refused (450) as PRD would; without it TEST accepts the invoice."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    strict = await token_context(sim, online_options=OnlineOptions(features=("subject-identifier-validation",)))
    lenient = await token_context(sim)
    refused = await strict.online().send(make_invoice(SAMPLE, number="FV/KSEFD/800", buyer_nip="1111111112"))
    assert (await wait_invoice(strict, refused.session_reference_number, refused.reference_number)).status.code == 450
    accepted = await lenient.online().send(make_invoice(SAMPLE, number="FV/KSEFD/801", buyer_nip="1111111112"))
    done = await wait_invoice(lenient, accepted.session_reference_number, accepted.reference_number)
    assert done.status.code == 200


async def test_offline_mode_is_sent_per_invoice(sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    today = warsaw_date(dt.datetime.now(dt.UTC))        # P_1 today: KSeF does not mark it Offline by itself (§8.3)
    offline = await ctx.online().send(make_invoice(SAMPLE, number="FV/KSEFD/850", issue_date=today),
                                      offline_mode=True)                    # PROTOCOL.md §8.2, §13.9
    online = await ctx.online().send(make_invoice(SAMPLE, number="FV/KSEFD/851", issue_date=today))
    assert offline.offline_mode and not online.offline_mode
    modes = [(await wait_invoice(ctx, s.session_reference_number, s.reference_number)).invoicing_mode
             for s in (offline, online)]
    assert modes == ["Offline", "Online"]


async def test_context_limits_are_read(sim: Any, token_context: Callable[..., Any]) -> None:
    ctx = await token_context(sim)
    limits = await ctx.limits()
    assert limits.online_session.max_invoices == 10_000 and limits.online_session.max_invoice_size_in_mb == 1
    assert limits.batch_session.max_invoice_with_attachment_size_in_mb == 3
    assert limits.collective_identifier is not None and limits.collective_identifier.max_invoices == 500  # §14.5


async def test_a_duplicate_reports_the_original_ksef_number(sim_factory: Any, token_context: Callable[..., Any]
                                                            ) -> None:
    """PROTOCOL.md §13.5: a resend is status 440 whose extensions point at the original; the daemon compares."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    first = await ctx.online().send(invoice(900))
    original = await wait_invoice(ctx, first.session_reference_number, first.reference_number)
    again = await ctx.online().send(invoice(900))
    duplicate = await wait_invoice(ctx, again.session_reference_number, again.reference_number)
    assert original.status.code == 200 and duplicate.status.code == 440
    assert duplicate.status.extensions is not None
    assert duplicate.status.extensions["originalKsefNumber"] == original.ksef_number
    assert duplicate.status.extensions["originalSessionReferenceNumber"] == first.session_reference_number


async def test_sends_reuse_keep_alive_connections(sim_factory: Any, token_context: Callable[..., Any],
                                                  http: aiohttp.ClientSession) -> None:
    """Issue #16: a fresh TCP connection per invoice cost a handshake each (a TLS one on KSeF). Sends one after
    another go over one kept-alive connection, a few at once over a few; each POSTed once."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    sender = ctx.online()
    await sender.send(invoice(0))                       # opens the session

    async def tally() -> dict[str, Any]:
        async with http.get(f"{sim.root_url}/sim/connections") as response:
            found: dict[str, Any] = await response.json()
        return found["operations"]["POST /v2/sessions/online/{referenceNumber}/invoices"]

    async with http.delete(f"{sim.root_url}/sim/connections"):
        pass
    for n in range(1, 11):
        await sender.send(invoice(n))
    assert await tally() == {"connections": 1, "requests": 10, "maxInFlight": 1}
    await asyncio.gather(*(sender.send(invoice(n)) for n in range(11, 15)))
    sends = await tally()
    assert sends["requests"] == 14 and sends["connections"] <= 4, sends
