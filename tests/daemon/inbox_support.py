"""Helpers for the inbox pipeline tests (issue #6): incoming invoices made the way they arise in reality,
by a seller company sending them into the simulator with the ksefd.ksef client (batch sessions for
volume, online for a few), and a buyer company configured through the real config parser."""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from ksefd.clock import WARSAW, ManualClock
from ksefd.config import Company, parse_config
from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.batch_archive import BatchInvoice, prepare_batch_async
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import KsefToken
from ksefd.samples import make_invoice, sample_bytes
from ksefd.store import Store
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate, xades_login

SELLER_NIP = "5265877635"
BUYER_NIP = "1111111111"
OTHER_NIP = "9999999999"
TEMPLATE = sample_bytes("FA_3_Przyklad_15.xml")     # the smallest official sample: the quickest to process
T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    ksef_number: str
    xml: bytes


def warsaw_day(clock: Any) -> dt.date:
    return clock.now().astimezone(WARSAW).date()


def invoice(number: str, clock: Any, seller: str = SELLER_NIP, buyer: str = BUYER_NIP) -> bytes:
    return make_invoice(TEMPLATE, number=number, seller_nip=seller, buyer_nip=buyer, issue_date=warsaw_day(clock))


async def seller_token(http: aiohttp.ClientSession, base_url: str, nip: str = SELLER_NIP,
                       valid_from: dt.datetime | None = None) -> str:
    """A KSeF token of `nip`'s owner. `valid_from` dates the owner's certificate, for a simulator whose clock
    is set into the past (create_ksef_token's certificate is valid from the real now)."""
    if valid_from is None:
        return await create_ksef_token(http, base_url, nip, ["InvoiceWrite", "InvoiceRead"])
    cert, key = self_signed_certificate(nip=nip, valid_from=valid_from, valid_days=1000)
    login = await xades_login(http, base_url, context_nip=nip, cert=cert, key=key)
    headers = {"Authorization": f"Bearer {login.access_token}"}
    body = {"permissions": ["InvoiceWrite", "InvoiceRead"], "description": "ksefd inbox tests"}
    async with http.post(f"{base_url}/tokens", json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        created = await resp.json()
    async with http.get(f"{base_url}/tokens/{created['referenceNumber']}", headers=headers) as resp:
        assert (await resp.json())["status"] in ("Pending", "Active")       # reading it activates it
    return str(created["token"])


async def seller_context(http: aiohttp.ClientSession, base_url: str, nip: str, clock: Any, token: str | None = None
                         ) -> tuple[KsefClient, KsefContext]:
    token = token or await seller_token(http, base_url, nip)
    client = KsefClient("test", base_url=base_url, clock=clock)
    return client, client.context(ContextIdentifier.nip(nip), KsefToken.parse(token))


async def send_batches(http: aiohttp.ClientSession, base_url: str, clock: Any, workdir: Path, count: int, *,
                       prefix: str = "FV", seller: str = SELLER_NIP, buyer: str = BUYER_NIP,
                       per_session: int = 10_000, token: str | None = None) -> list[Sent]:
    """`count` distinct invoices from `seller` to `buyer`, sent in batch sessions; all must be accepted.
    `token`: the seller's KSeF token, made beforehand when the clock is to be set into the past."""
    client, context = await seller_context(http, base_url, seller, clock, token)
    sent: list[Sent] = []
    try:
        for start in range(0, count, per_session):
            size = min(per_session, count - start)
            made = {f"{prefix}-{start + i:06d}.xml": invoice(f"{prefix}/{start + i}", clock, seller, buyer)
                    for i in range(size)}
            prepared = await prepare_batch_async([BatchInvoice(n, b) for n, b in made.items()],
                                                 workdir / f"batch-{prefix}-{start}")
            outcome = await context.batch().send(prepared)
            prepared.cleanup()
            rejected = [(r.entry.file_name, r.status_code) for r in outcome.results if not r.accepted]
            assert not rejected, rejected[:5]
            sent += [Sent(str(r.ksef_number), made[r.entry.file_name]) for r in outcome.results]
    finally:
        await client.close()
    return sent


async def send_online(http: aiohttp.ClientSession, base_url: str, clock: Any, count: int, *, prefix: str = "ON",
                      seller: str = SELLER_NIP, buyer: str = BUYER_NIP) -> list[Sent]:
    """`count` invoices sent one by one in an online session; waits for every KSeF number."""
    client, context = await seller_context(http, base_url, seller, clock)
    sent: list[Sent] = []
    try:
        sender = context.online()
        pending = []
        for i in range(count):
            xml = invoice(f"{prefix}/{i}", clock, seller, buyer)
            pending.append((await sender.send(xml), xml))
        for result, xml in pending:
            for _ in range(500):
                status = await context.sessions.invoice(result.session_reference_number, result.reference_number)
                if status.status.code >= 200:
                    break
                await asyncio.sleep(0.01)
            assert status.status.code == 200, status
            sent.append(Sent(str(status.ksef_number), xml))
        await context.close()
    finally:
        await client.close()
    return sent


def company(tmp_path: Path, token: str, *, name: str = "buyer", nip: str = BUYER_NIP, base_url: str,
            receiving: str = "", send: bool = False, extra: str = "") -> Company:
    """A company parsed from TOML by the real config loader (as `ksefd run` reads it)."""
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(token)
    text = textwrap.dedent(f"""
        [ksef]
        base_url = "{base_url}"
        [daemon]
        data_dir = "{tmp_path / 'data'}"
        [[companies]]
        name = "{name}"
        nip = "{nip}"
        send = {str(send).lower()}
        receive = true
        token_file = "{token_file}"
        """) + textwrap.dedent(extra) + "\n[companies.receiving]\n" + textwrap.dedent(receiving)
    return parse_config(text, base_dir=tmp_path).companies[0]


async def buyer_context(http: aiohttp.ClientSession, base_url: str, clock: Any, nip: str = BUYER_NIP,
                        **client_options: Any) -> tuple[KsefClient, KsefContext, str]:
    token = await create_ksef_token(http, base_url, nip, ["InvoiceRead"])
    client = KsefClient("test", base_url=base_url, clock=clock, **client_options)
    return client, client.context(ContextIdentifier.nip(nip), KsefToken.parse(token)), token


async def open_store(path: Path, clock: Any) -> Store:
    return await Store.open(path, clock)


def inbox_files(inbox: Path) -> dict[str, bytes]:
    """KSeF number -> bytes of every delivered XML (any layout); dot-files (temps) excluded."""
    return {p.stem: p.read_bytes() for p in inbox.rglob("*.xml") if not p.name.startswith(".")}


async def drive(clock: ManualClock, work: Awaitable[T], step: float = 30.0, tick: float = 0.002) -> T:
    """Run `work`; whenever something sleeps on the manual clock, move the clock on by `step` seconds."""
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.sleep(tick)
        if clock.sleepers:
            clock.advance(step)
    return task.result()


Advance = Callable[[float], None]
