"""`ksefd status` says when KSeF's rate limits hold invoices back (issue #16): an invoice moves to SUBMITTING
before its send asks the limiter for room, so while `invoiceSend`'s 30 a minute (PROTOCOL.md §7) waits, it was
counted as "in KSeF" with no word of why nothing moved. The heartbeat now carries what the limiter holds back."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp

from ksefd import i18n
from ksefd.clock import ManualClock
from ksefd.daemon import service
from ksefd.daemon.service import serve
from ksefd.daemon.status import gather, render
from ksefd.daemon.status_page import company_page
from ksefd.i18n import counted
from ksefd.ksef import RateLimiter
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.support import SELLER, drop, invoice, invoice_rows, load, token_file, write_config

S = InvoiceState


async def test_the_limiter_names_what_waits_and_until_when() -> None:
    now = [1000.0]
    limiter = RateLimiter(now=lambda: now[0], margin=0.0)
    context = "Nip:" + SELLER
    for _ in range(10):                                         # invoiceSend: 10 a second (§7)
        await limiter.acquire(context, "invoiceSend")
    assert limiter.held_back() == {}
    waiting = [asyncio.create_task(limiter.acquire(context, "invoiceSend")) for _ in range(3)]
    await asyncio.sleep(0)
    assert limiter.held_back() == {context: {"invoiceSend": (3, 1001.0)}}
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert limiter.held_back() == {}


async def _status(config: Any, clock: ManualClock) -> str:
    async with await Store.open(config.state_db) as store:
        return render(await gather(store, config, clock))


async def test_status_says_which_invoices_wait_for_the_limit_and_when_they_go(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(service, "HEARTBEAT_SECONDS", 0.1)     # real seconds: not the 10 s a test would wait
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="production"), clock=clock)
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               sending={"batch_threshold": 100}, daemon={"language": "pl"}))
    for n in range(36):
        drop(config.companies[0].folders.outbox, f"FV-{n}.xml", invoice(f"LIMIT/{n}"))
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(config, stop, clock=clock))

    async def states() -> list[S]:
        return [r.state for r in await invoice_rows(config, "acme")]
    try:
        for _ in range(400):                     # invoiceSend lets 10 a second through, 30 a minute (§7)
            await asyncio.sleep(0.02)
            clock.advance(0.05)
            if (await states()).count(S.DONE) == 30:
                break
        for _ in range(100):                     # the rest wait for the minute window; the heartbeat says so
            await asyncio.sleep(0.05)
            if "czeka na limit" in (text := await _status(config, clock)):
                break
        held = (await states()).count(S.SUBMITTING)
        assert held and f"w KSeF {held}," in text, text
        waits = [line for line in text.splitlines() if "czeka na limit" in line]
        invoices = counted(held, "invoice", "pl")
        assert waits == [f"  czeka na limit zapytań KSeF: wysyłka online: ksefd wyśle {invoices} spośród "
                         f"liczonych jako „w KSeF”, gdy limit na to pozwoli; ksefd wznowi to sam "
                         f"{waits[0].split(' sam ')[1].split(',')[0]}, nic nie trzeba robić"], text
        assert "(za " in waits[0] and " s)" in waits[0], waits        # e.g. "07.12.2026 09:31:05 (za 52 s)"
        assert all(s != S.DONE for s in (await states())[30:])          # nothing of them left early
        assert "najdłużej czeka: FV-30.xml (wysyłana od " in text, text            # the state in words, not a code
        async with await Store.open(config.state_db) as store:
            with i18n.using("pl"):                                       # the status page says it too
                page = await company_page(store, config, clock, config.companies[0], "connected")
        assert f"<p>{waits[0].strip()}</p>" in page.replace("&#x27;", "'"), page
        for _ in range(600):                     # the window frees: they go by themselves
            await asyncio.sleep(0.02)
            clock.advance(0.5)
            if (await states()).count(S.DONE) == 36:
                break
        assert (await states()).count(S.DONE) == 36
        await asyncio.sleep(0.3)
        assert "czeka na limit" not in await _status(config, clock)
    finally:
        stop.set()
        await daemon
