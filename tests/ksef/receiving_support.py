"""Shared set-up for the receiving and export tests (the seller context is conftest's `token_context`): invoices put
into KSeF quickly (through a batch session), so there is something to receive."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ksefd.ksef.batch import BatchOptions
from ksefd.ksef.batch_archive import BatchInvoice, prepare_batch_async
from ksefd.ksef.client import KsefContext
from ksefd.samples import make_invoice, sample_bytes
from tests.ksef.conftest import SELLER_NIP


async def put_invoices(ctx: KsefContext, workdir: Path, count: int, start: int = 0) -> dict[str, bytes]:
    """`count` accepted invoices; returns KSeF number -> the exact bytes sent."""
    template = sample_bytes("FA_3_Przyklad_1.xml")
    sent = {f"R{n:05d}.xml": make_invoice(template, number=f"FV/RECV/{n}", seller_nip=SELLER_NIP)
            for n in range(start, start + count)}
    prepared = await prepare_batch_async([BatchInvoice(name, data) for name, data in sent.items()],
                                         workdir / f"batch-{start}")
    outcome = await ctx.batch(options=BatchOptions(poll_first=0.02, poll_max=0.1)).send(prepared)
    assert all(r.accepted for r in outcome.results), {r.status_code for r in outcome.results}
    await asyncio.sleep(0.01)          # permanentStorageDate is a millisecond after acceptance
    return {r.ksef_number or "": sent[r.entry.file_name] for r in outcome.results}
