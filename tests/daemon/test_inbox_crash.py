"""Issue #6, done means: a kill -9 during a package leaves no partial file and loses nothing.

The daemon runs as a real subprocess (`python -m ksefd run`), receiving 1 600 invoices in packages of at
most 200; it is killed with SIGKILL while packages are being delivered and restarted each time: in turn
while the files of a package are being written (temp files present) and while they are being renamed
into place (the first ones visible), each after a small random delay. Between runs the "ERP" takes every
file it sees out of the inbox, as a real one would, so a second delivery of any invoice would show up. At
the end `ksefd run --once` finishes the work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import SystemClock
from ksefd.config import load_config
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from ksefd.store import Store
from tests.daemon.inbox_support import BUYER_NIP, send_batches, warsaw_day
from tests.support.ksef_auth import create_ksef_token

ROOT = Path(__file__).resolve().parents[2]
COUNT = 1_600
KILLS = 8


def visible(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.glob("*") if p.is_file() and not p.name.startswith("."))


def temps(inbox: Path) -> list[Path]:
    return sorted(inbox.glob(".*.ksefd.tmp"))


async def daemon(config: Path, log: Path, *args: str) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "-c", str(config), *args,
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink)


@pytest.mark.timeout(300)
async def test_kill_9_during_packages_leaves_no_partial_file_and_loses_nothing(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", hwm_lag_s=1, query_cap=200))
    clock = SystemClock()
    sent = {s.ksef_number: s.xml for s in await send_batches(http, sim.base_url, clock, tmp_path, COUNT)}
    await asyncio.sleep(1.2)                                     # the HWM passes the last invoice
    (tmp_path / "buyer.token").write_text(await create_ksef_token(http, sim.base_url, BUYER_NIP, ["InvoiceRead"]))
    config = tmp_path / "ksefd.toml"
    config.write_text(textwrap.dedent(f"""
        [ksef]
        base_url = "{sim.base_url}"
        [daemon]
        data_dir = "data"
        shutdown_grace_seconds = 2
        [[companies]]
        name = "buyer"
        nip = "{BUYER_NIP}"
        send = false
        token_file = "buyer.token"
        [companies.receiving]
        backfill_from = {warsaw_day(clock) - dt.timedelta(days=1)}
        """))
    loaded = load_config(config)
    inbox = loaded.company("buyer").folders.inbox
    erp: dict[str, bytes] = {}                                   # what the ERP took away, by KSeF number
    log = tmp_path / "daemon.log"
    rng = random.Random(6)
    kills, caught_writing = 0, 0
    while kills < KILLS and len(erp) < COUNT:
        process = await daemon(config, log)
        trigger = temps if kills % 2 == 0 else visible
        try:
            async with asyncio.timeout(60):                      # until this run is delivering a package
                while not trigger(inbox) and process.returncode is None:   # noqa: ASYNC110 (polling a folder)
                    await asyncio.sleep(0.002)
            await asyncio.sleep(rng.uniform(0, 0.02))
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        kills += 1
        caught_writing += bool(temps(inbox))
        take_everything(inbox, sent, erp)
    print(f"\n{kills} kills, {caught_writing} while temp files were being written; {len(erp)} taken before the end")
    final = await daemon(config, log, "--once")
    assert await asyncio.wait_for(final.wait(), 120) == 0, log.read_text()[-3000:]
    take_everything(inbox, sent, erp)
    assert kills == KILLS and caught_writing >= 1
    assert erp == sent                                           # every invoice, each once, byte for byte
    assert not [p for p in inbox.rglob("*") if p.is_file()]     # no temp, no leftover
    async with await Store.open(loaded.state_db) as store:
        assert await store.inbox.delivered_count("buyer") == COUNT
        assert await store.kv.items("inbox_staged") == {}


def take_everything(inbox: Path, sent: dict[str, bytes], erp: dict[str, bytes]) -> None:
    """The ERP's turn: every visible file must be whole (no partial file), then it is taken away."""
    files = visible(inbox)
    xmls = {p.stem: p for p in files if p.suffix == ".xml"}
    jsons = {p.stem: p for p in files if p.suffix == ".json"}
    assert set(xmls) <= set(jsons), "an XML without its metadata"
    for number, path in xmls.items():
        data = path.read_bytes()
        assert data == sent[number], f"{path.name} is not the invoice KSeF holds (partial?)"
        meta = json.loads(jsons[number].read_text())
        assert meta["ksefNumber"] == number and meta["invoiceHash"] == sha256_b64(data)
        assert number not in erp, f"{number} delivered twice"
        erp[number] = data
    for number in xmls:
        xmls[number].unlink()
        jsons[number].unlink()
    # A JSON without its XML (yet) is left for the next look: it appears first, its XML follows.
