"""Shared set-up for the receiving and export tests: a seller context on the simulator and invoices put
into KSeF quickly (through a batch session), so there is something to receive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.batch import BatchOptions
from ksefd.ksef.batch_archive import BatchInvoice, prepare_batch_async
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import KsefToken
from ksefd.samples import make_invoice, sample_bytes
from tests.support.ksef_auth import create_ksef_token

NIP = "9999999999"          # Podmiot1 of the official sample: these invoices are its sales (Subject1)
FAST_AUTH = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


@pytest.fixture
async def seller(http: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Any]]:
    clients: list[KsefClient] = []

    async def make(sim: Any, **client_options: Any) -> KsefContext:
        token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
        client = KsefClient("test", base_url=sim.base_url, auth_options=FAST_AUTH, **client_options)
        clients.append(client)
        return client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))

    yield make
    for client in clients:
        await client.close()


async def put_invoices(ctx: KsefContext, workdir: Path, count: int, start: int = 0) -> dict[str, bytes]:
    """`count` accepted invoices; returns KSeF number -> the exact bytes sent."""
    template = sample_bytes("FA_3_Przyklad_1.xml")
    sent = {f"R{n:05d}.xml": make_invoice(template, number=f"FV/RECV/{n}", seller_nip=NIP)
            for n in range(start, start + count)}
    prepared = await prepare_batch_async([BatchInvoice(name, data) for name, data in sent.items()],
                                         workdir / f"batch-{start}")
    outcome = await ctx.batch(options=BatchOptions(poll_first=0.02, poll_max=0.1)).send(prepared)
    assert all(r.accepted for r in outcome.results), {r.status_code for r in outcome.results}
    await asyncio.sleep(0.01)          # permanentStorageDate is a millisecond after acceptance
    return {r.ksef_number or "": sent[r.entry.file_name] for r in outcome.results}
