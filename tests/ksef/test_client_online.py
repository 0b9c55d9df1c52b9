"""The client's online sessions against the simulator over HTTP (issue #4 item 4)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import KsefToken
from ksefd.ksef.crypto import sha256_b64
from ksefd.ksef.errors import OutcomeUnknown
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

    async def make(sim: Any, clock: Any = None, online: OnlineOptions | None = None,
                   via: str | None = None) -> KsefContext:
        token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
        client = KsefClient("test", base_url=via or sim.base_url, clock=clock, auth_options=FAST,
                            online_options=online)
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


class FaultProxy:
    """Forwards everything to the simulator, except: sends into a session listed in `session_unavailable` get
    400/21184 (the simulator has no such switch yet), and with `drop_first_send` the simulator's answer to the
    first invoice send is dropped after the simulator processed it."""

    def __init__(self, target_root: str, *, drop_first_send: bool = False,
                 session_unavailable: set[str] | None = None) -> None:
        self.target_root = target_root
        self.drop_first_send = drop_first_send
        self.session_unavailable = session_unavailable if session_unavailable is not None else set()
        self.sends: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_send = request.method == "POST" and request.path.endswith("/invoices")
        if is_send:
            session = request.path.split("/")[-2]
            self.sends.append(session)
            if session in self.session_unavailable:     # KSeF maintenance: 400/21184 (PROTOCOL.md §14.3)
                return web.json_response({"exception": {"exceptionDetailList": [{
                    "exceptionCode": 21184, "exceptionDescription": "Sesja tymczasowo niedostępna.",
                    "details": []}], "timestamp": "2026-01-01T00:00:00.0000000+00:00"}}, status=400)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as http, http.request(
                request.method, self.target_root + request.path_qs, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            status, content_type = upstream.status, upstream.headers.get("Content-Type")
        if is_send and self.drop_first_send:
            self.drop_first_send = False
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=502)
        response = web.Response(status=status, body=payload)
        if content_type:
            response.headers["Content-Type"] = content_type
        return response


@pytest.fixture
async def proxy_url() -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(proxy: FaultProxy) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}/v2"

    yield start
    for server in servers:
        await server.close()


async def test_lost_answer_to_a_send_is_outcome_unknown_and_never_resent(
        sim_factory: Any, make_context: Callable[..., Any], proxy_url: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    proxy = FaultProxy(sim.root_url, drop_first_send=True)
    ctx = await make_context(sim, via=await proxy_url(proxy))
    with pytest.raises(OutcomeUnknown) as caught:
        await ctx.online().send(invoice(500))
    lost = caught.value
    assert len(proxy.sends) == 1                               # not re-POSTed
    assert lost.invoice_hash == sha256_b64(invoice(500)) and lost.session_reference
    # The daemon resolves it: the invoice is in the session, found by its hash.
    listed = await ctx.sessions.invoices(lost.session_reference)
    assert [i.invoice_hash for i in listed] == [lost.invoice_hash]
    nxt = await ctx.online().send(invoice(501))                # the session is still usable
    assert nxt.session_reference_number == lost.session_reference and len(proxy.sends) == 2


async def test_21184_moves_the_same_bytes_to_a_new_session(
        sim_factory: Any, make_context: Callable[..., Any], proxy_url: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    proxy = FaultProxy(sim.root_url)
    ctx = await make_context(sim, via=await proxy_url(proxy))
    first = await ctx.online().send(invoice(600))
    proxy.session_unavailable.add(first.session_reference_number)     # maintenance hits the open session
    second = await ctx.online().send(invoice(601))
    assert proxy.sends == [first.session_reference_number, first.session_reference_number,
                           second.session_reference_number]
    assert second.session_reference_number != first.session_reference_number
    assert second.invoice_hash == sha256_b64(invoice(601)) and second.invoice_size == len(invoice(601))
    done = await wait_invoice(ctx, second.session_reference_number, second.reference_number)
    assert done.status.code == 200 and done.invoice_hash == second.invoice_hash
    # The old session was closed (its first invoice keeps its UPO) and is not used again.
    assert (await wait_session(ctx, first.session_reference_number)).status.code == 200
    third = await ctx.online().send(invoice(602))
    assert third.session_reference_number == second.session_reference_number


async def test_concurrent_sends_share_sessions_within_the_cap(
        sim_factory: Any, make_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim, online=OnlineOptions(max_invoices=3))
    sent = await asyncio.gather(*(ctx.online().send(invoice(700 + n)) for n in range(7)))
    per_session: dict[str, int] = {}
    for s in sent:
        per_session[s.session_reference_number] = per_session.get(s.session_reference_number, 0) + 1
    assert sorted(per_session.values()) == [1, 3, 3]
    full = [ref for ref, count in per_session.items() if count == 3]
    for ref in full:                                         # full sessions are closed once their sends finish
        assert (await wait_session(ctx, ref)).status.code == 200


async def test_context_gives_the_other_senders(sim: Any, make_context: Callable[..., Any]) -> None:
    ctx = await make_context(sim)
    assert ctx.batch().auth is ctx.auth and ctx.exporter().auth is ctx.auth and ctx.receiver().auth is ctx.auth


async def test_feature_header_on_open_is_accepted(sim_factory: Any, make_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await make_context(sim, online=OnlineOptions(features=("subject-identifier-validation",)))
    session = await ctx.online().open()                     # X-KSeF-Feature is in the spec (PROTOCOL.md §14.3)
    assert session.reference_number[9:11] == "SO"
    assert await ctx.online().close() == session.reference_number


async def test_context_limits_are_read(sim: Any, make_context: Callable[..., Any]) -> None:
    ctx = await make_context(sim)
    limits = await ctx.limits()
    assert limits.online_session.max_invoices == 10_000 and limits.online_session.max_invoice_size_in_mb == 1
    assert limits.batch_session.max_invoice_with_attachment_size_in_mb == 3
