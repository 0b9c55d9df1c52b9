"""A closed batch's invoices say SUBMITTING in their state files only once KSeF takes longer than
batch.SHOW_AFTER: a batch done sooner creates no state file per invoice that lives a second (issue #16). The same
for QUEUED (ledger.SHOW_QUEUED_AFTER): a backlog taken into a batch at once never gets a state file at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.daemon.outbox import batch, ledger
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState
from tests.daemon.support import SELLER, drain, drop, invoice, invoice_rows, load, token_file, write_config

COUNT = 6


async def _states_seen(sim_factory: Any, http: aiohttp.ClientSession, folder: Path) -> set[str]:
    """Drain COUNT invoices in one batch through a simulator that processes it for 0.8 s; every state any
    state file showed meanwhile."""
    sim = await sim_factory(config=SimConfig(limits_profile="off", processing_delay_s=0.8))
    token = await token_file(http, sim.base_url, folder, SELLER)
    config = load(write_config(folder, sim.base_url, [{"name": "acme", "nip": SELLER,
                                                       "token_file": str(token)}], sending={"batch_threshold": 2}))
    outbox = config.companies[0].folders.outbox
    for n in range(COUNT):
        drop(outbox, f"S{n}.xml", invoice(f"STATE/{n}"))
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            for path in outbox.glob("*.state.json"):
                with contextlib.suppress(OSError, ValueError):
                    seen.add(json.loads(path.read_bytes())["state"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        await drain(config)
    finally:
        watcher.cancel()
    rows = await invoice_rows(config, "acme")
    assert len(rows) == COUNT and {r.state for r in rows} == {InvoiceState.DONE}
    assert len({r.session_id for r in rows}) == 1 and not list(outbox.glob("*.state.json"))
    return seen


async def test_a_batch_done_before_show_after_leaves_its_state_files_queued(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "SHOW_AFTER", 30.0)
    monkeypatch.setattr(ledger, "SHOW_QUEUED_AFTER", 0.0)
    seen = await _states_seen(sim_factory, http, tmp_path)
    assert "queued" in seen and "submitting" not in seen, seen


async def test_a_batch_ksef_works_on_longer_says_submitting_meanwhile(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "SHOW_AFTER", 0.1)
    seen = await _states_seen(sim_factory, http, tmp_path)
    assert "submitting" in seen, seen


async def test_a_backlog_taken_into_a_batch_at_once_never_says_queued(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "SHOW_AFTER", 30.0)       # QUEUED's own delay as by default (2 s)
    seen = await _states_seen(sim_factory, http, tmp_path)
    assert seen == set(), seen
