"""Issue #6, done means: two companies where one sends to the other; the buyer's inbox receives exactly
what was sent. Both run in the real daemon (`serve`, as `ksefd run --once` does): the seller drops files
into its outbox, the daemon sends them, and the buyer's receiving pulls them into its inbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import SystemClock
from ksefd.config import Config, load_config
from ksefd.daemon.inbox.status import read_inbox_status
from ksefd.daemon.service import serve
from ksefd.daemon.status import gather, render
from ksefd.sim.config import SimConfig
from ksefd.store import Store
from tests.daemon.inbox_support import BUYER_NIP, OTHER_NIP, SELLER_NIP, invoice, warsaw_day
from tests.support.ksef_auth import create_ksef_token


async def write_config(tmp_path: Path, http: aiohttp.ClientSession, base_url: str, clock: Any) -> Path:
    seller = tmp_path / "seller.token"
    seller.write_text(await create_ksef_token(http, base_url, SELLER_NIP, ["InvoiceWrite", "InvoiceRead"]))
    buyer = tmp_path / "buyer.token"
    buyer.write_text(await create_ksef_token(http, base_url, BUYER_NIP, ["InvoiceRead"]))   # read-only
    path = tmp_path / "ksefd.toml"
    path.write_text(textwrap.dedent(f"""
        [ksef]
        base_url = "{base_url}"
        [daemon]
        data_dir = "data"
        settle_seconds = 0
        rescan_interval_seconds = 0.5
        shutdown_grace_seconds = 5
        [[companies]]
        name = "seller"
        nip = "{SELLER_NIP}"
        send = true
        receive = false
        token_file = "seller.token"
        [[companies]]
        name = "buyer"
        nip = "{BUYER_NIP}"
        send = false
        receive = true
        token_file = "buyer.token"
        [companies.receiving]
        backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}
        """))
    return path


async def drain(config: Config, seconds: float) -> None:
    """`ksefd run --once`: until the outboxes are done and each inbox ran one cycle."""
    await asyncio.wait_for(serve(config, asyncio.Event(), once=True), seconds)


def drop(outbox: Path, name: str, data: bytes) -> None:
    """As a careful ERP drops a file: a temporary name, then a rename."""
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / f"{name}.tmp").write_bytes(data)
    (outbox / f"{name}.tmp").rename(outbox / name)


@pytest.mark.timeout(180)
async def test_the_buyers_inbox_receives_exactly_what_the_seller_sent(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", hwm_lag_s=1))
    clock = SystemClock()
    config = load_config(await write_config(tmp_path, http, sim.base_url, clock))
    seller, buyer = config.company("seller"), config.company("buyer")
    for i in range(8):
        drop(seller.folders.outbox, f"FV-{i}.xml", invoice(f"FV/B/{i}", clock))
    for i in range(3):                                   # to someone else: never in this buyer's inbox
        drop(seller.folders.outbox, f"OTHER-{i}.xml", invoice(f"FV/O/{i}", clock, buyer=OTHER_NIP))
    await drain(config, 90)                      # the seller sends; the buyer's first cycle runs too
    accepted = {}
    for meta in seller.folders.sent.glob("*.ksef.json"):
        name = meta.name[:-len(".ksef.json")]
        number = json.loads(meta.read_text())["ksefNumber"]
        accepted[number] = (name, (seller.folders.sent / f"{name}.xml").read_bytes())
    assert len(accepted) == 11
    await asyncio.sleep(1.5)                             # the HWM (1 s behind now) passes the last invoice
    await drain(config, 60)
    received = {p.stem: p.read_bytes() for p in buyer.folders.inbox.glob("*.xml")}
    expected = {number: data for number, (name, data) in accepted.items() if name.startswith("FV-")}
    assert received == expected
    for number in received:
        meta = json.loads((buyer.folders.inbox / f"{number}.json").read_text())
        assert meta["buyer"]["identifier"] == {"type": "Nip", "value": BUYER_NIP}
        assert meta["seller"]["nip"] == SELLER_NIP
    assert not seller.folders.inbox.exists() or not list(seller.folders.inbox.iterdir())   # receive = false
    async with await Store.open(config.state_db) as store:
        assert await store.inbox.delivered_count("buyer") == 8
        status = await read_inbox_status(store, "buyer")
        assert status is not None and status["subjects"]["Subject2"]["checkpoint"] is not None
        shown = render(await gather(store, config, clock))              # `ksefd status`
    assert "dostarczono łącznie 8" in shown and "jako nabywca (Subject2): faktury do" in shown       # Polish by default
