"""A 10 000-invoice backlog goes through batch sessions of at most 10 000 (issue #5 item 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.support import SELLER, drain, invoice, load, sim_records, token_file, write_config

COUNT = 10_000


@pytest.mark.timeout(900)
async def test_ten_thousand_invoices_go_by_batch(sim_factory: Any, http: aiohttp.ClientSession,
                                                 tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="production"))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               daemon={"rescan_interval_seconds": 5, "log_level": "warning"}))
    outbox = config.companies[0].folders.outbox
    outbox.mkdir(parents=True)
    for n in range(COUNT):
        (outbox / f"FV{n:05d}.xml").write_bytes(invoice(f"BACKLOG/{n}"))

    await drain(config, limit=840)

    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == COUNT and len(list(sent.glob("*.ksef.json"))) == COUNT
    records = sim_records(sim)
    assert len(records) == COUNT and {r["sessionType"] for r in records} == {"Batch"}
    per_session: dict[str, int] = {}
    for record in records:
        per_session[record["sessionReferenceNumber"]] = per_session.get(record["sessionReferenceNumber"], 0) + 1
    assert max(per_session.values()) <= 10_000
    async with await Store.open(config.state_db) as store:
        assert (await store.invoices.counts("acme")) == {InvoiceState.DONE: COUNT}
