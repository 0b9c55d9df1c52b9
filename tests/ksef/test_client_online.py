"""The client's online sessions against the simulator over HTTP (issue #4 item 4)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from lxml import etree

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import KsefToken
from ksefd.ksef.crypto import sha256_b64
from ksefd.ksef.models import SessionInvoice, SessionStatus
from ksefd.ksef.online import OnlineOptions
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES
from tests.support.ksef_auth import create_ksef_token

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
NIP = "9999999999"          # the seller (Podmiot1) of the sample
UPO_NS = "{http://upo.schematy.mf.gov.pl/KSeF/v4-3}"
FAST = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


def invoice(number: int) -> bytes:
    """The sample with its own P_2: (NIP, RodzajFaktury, P_2) is the duplicate key (PROTOCOL.md §4.2)."""
    return SAMPLE.replace(b"<P_2>FV2026/02/150</P_2>", f"<P_2>FV/KSEFD/{number}</P_2>".encode())


@pytest.fixture
async def make_context(http: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Any]]:
    clients: list[KsefClient] = []

    async def make(sim: Any, clock: Any = None, online: OnlineOptions | None = None) -> KsefContext:
        token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
        client = KsefClient("test", base_url=sim.base_url, clock=clock, auth_options=FAST, online_options=online)
        clients.append(client)
        return client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))

    yield make
    for client in clients:
        await client.close()


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


async def test_full_online_session_with_upos(sim_factory: Any, make_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim)
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
        sim_factory: Any, make_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim, online=OnlineOptions(max_invoices=2))
    sent = [await ctx.online().send(invoice(100 + n)) for n in range(3)]
    sessions = [s.session_reference_number for s in sent]
    assert sessions[0] == sessions[1] != sessions[2]
    closed = await wait_session(ctx, sessions[0])           # closed by the sender once it was full
    assert closed.status.code == 200 and closed.invoice_count == 2


async def test_session_near_12_hours_is_replaced(sim_factory: Any, make_context: Callable[..., Any]) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    ctx = await make_context(sim, clock=clock)
    first = await ctx.online().send(invoice(200))
    clock.advance(11 * 3600 + 50 * 60)                      # 10 minutes before validUntil (margin 15 min)
    second = await ctx.online().send(invoice(201))
    assert second.session_reference_number != first.session_reference_number
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200


async def test_send_refused_by_a_dead_session_goes_to_a_new_one(
        sim_factory: Any, make_context: Callable[..., Any]) -> None:
    """21180 (session closed behind our back) takes the same path as 21184: a new session, the same bytes."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim)
    first = await ctx.online().send(invoice(300))
    await ctx.request("POST", "/sessions/online/{referenceNumber}/close",
                      params={"referenceNumber": first.session_reference_number}, expect=(204,))
    second = await ctx.online().send(invoice(301))
    assert second.session_reference_number != first.session_reference_number
    assert second.invoice_hash == sha256_b64(invoice(301))
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200


async def test_21470_on_session_open_after_key_rotation(sim_factory: Any, make_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim)
    await ctx.client.public_keys.refresh()
    new = sim.world.keys.rotate("SymmetricKeyEncryption")
    sent = await ctx.online().send(invoice(400))
    assert ctx.online().current is not None and ctx.online().current.public_key_id == new
    assert (await wait_invoice(ctx, sent.session_reference_number, sent.reference_number)).status.code == 200
