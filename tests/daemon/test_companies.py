"""Several companies at once: concurrent and fair; a read-only company never sends and is put on hold
with a clear reason while the others go on; it resumes by itself once its token is fixed (issue #5 item 6)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.config import Config
from ksefd.daemon.service import serve
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.support import (
    BUYER,
    OTHER,
    READ_ONLY,
    SELLER,
    drain,
    drop,
    invoice,
    load,
    one_company,
    read_json,
    sim_records,
    token_file,
    write_config,
)


async def test_two_companies_at_once_and_a_backlog_does_not_starve_a_trickle(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", processing_delay_s=0.005))
    first = await token_file(http, sim.base_url, tmp_path, SELLER)
    second = await token_file(http, sim.base_url, tmp_path, OTHER)
    config = load(write_config(tmp_path, sim.base_url, [
        {"name": "big", "nip": SELLER, "token_file": str(first)},
        {"name": "small", "nip": OTHER, "token_file": str(second)}], sending={"batch_threshold": 50}))
    big, small = config.companies
    for n in range(300):
        drop(big.folders.outbox, f"B{n:03d}.xml", invoice(f"BIG/{n}"))
    drop(small.folders.outbox, "S1.xml", invoice("SMALL/1", seller=OTHER, buyer=SELLER))

    await drain(config, limit=90)

    trickle = read_json(small.folders.sent / "S1.ksef.json")
    backlog = [read_json(big.folders.sent / f"B{n:03d}.ksef.json") for n in range(300)]
    assert trickle["sessionType"] == "online" and {r["sessionType"] for r in backlog} == {"batch"}
    # The small company's invoice did not wait for the big one's 300 (processed in order by KSeF).
    assert trickle["acquisitionDate"] < max(r["acquisitionDate"] for r in backlog)
    assert len({r["ksefNumber"] for r in backlog}) == 300


async def test_read_only_company_never_sends_and_is_held_with_a_reason(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    writer = await token_file(http, sim.base_url, tmp_path, SELLER)
    reader = await token_file(http, sim.base_url, tmp_path, OTHER, READ_ONLY)
    path = write_config(tmp_path, sim.base_url, [
        {"name": "acme", "nip": SELLER, "token_file": str(writer)},
        {"name": "office", "nip": OTHER, "token_file": str(reader)},
        {"name": "receiver", "nip": BUYER, "token_file": str(writer), "send": False}])
    config = load(path)
    acme, office, receiver = config.companies
    drop(acme.folders.outbox, "A.xml", invoice("HOLD/A"))
    drop(office.folders.outbox, "O.xml", invoice("HOLD/O", seller=OTHER))
    drop(receiver.folders.outbox, "R.xml", invoice("HOLD/R", seller=BUYER))

    await drain(config)

    assert read_json(acme.folders.sent / "A.ksef.json")["ksefNumber"]            # the others go on
    assert [r["contextValue"] for r in sim_records(sim)] == [SELLER]              # the read-only one sent nothing
    assert (receiver.folders.outbox / "R.xml").exists()                           # send = false: not even claimed
    state = read_json(office.folders.outbox / "O.state.json")
    assert state["state"] == "held" and "InvoiceWrite" in state["hold"]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "status", "-c", str(path), "--json",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    status = json.loads(out)
    held = next(c for c in status["companies"] if c["name"] == "office")
    assert held["on_hold"]["code"] == "missing-permission" and "InvoiceWrite" in held["on_hold"]["reason"]
    assert held["queued"] == 1 and held["oldest_waiting"]["file"] == "O.xml"
    assert next(c for c in status["companies"] if c["name"] == "acme")["accepted_today"] == 1


async def test_held_company_resumes_once_its_token_is_fixed(sim_factory: Any, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    sim, token, config = await one_company(sim_factory, http, tmp_path, name="office", nip=OTHER,
                                           permissions=READ_ONLY, hold_retry_seconds=1)
    office = config.companies[0]
    drop(office.folders.outbox, "O.xml", invoice("RESUME/O", seller=OTHER))
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(config, stop))
    try:
        await _until(lambda: _held(config))
        assert sim_records(sim) == []
        fixed = await token_file(http, sim.base_url, tmp_path, OTHER)              # a person replaces the token
        token.write_text(fixed.read_text())
        await _until(lambda: _exists(office.folders.sent / "O.upo.xml"))
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 30)
    async with await Store.open(config.state_db) as store:
        assert await store.holds.get("office") is None
        rows = await store.invoices.in_state("office", *InvoiceState)
        assert [r.state for r in rows] == [InvoiceState.DONE]


async def _held(config: Config) -> bool:
    async with await Store.open(config.state_db) as store:
        return await store.holds.get(config.companies[0].name) is not None


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def _until(check: Any) -> None:
    """Poll a condition the daemon makes true (files and rows give no event to wait on)."""
    async with asyncio.timeout(30):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def test_bad_config_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[daemon]\ndata_dir = "d"\n[[companies]]\nname = "x"\nnip = "1234567890"\nsend = false\n'
                    'receive = false\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "ksefd", "run", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 78
    assert "ma błędną cyfrę kontrolną NIP" in done.stderr        # fails the NIP checksum (Polish by default)
