"""Issue #11, "done means": a FAILURE window while invoices arrive for two companies, the daemon a real
subprocess killed with SIGKILL at random moments while it sends the offline invoices after the outage. Each
invoice is issued offline once (one NAME.offline.json, its KOD I and KOD II), sent with offlineMode, accepted
once with invoicingMode Offline, with its UPO; any second submission is a 440 of the same document."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.offline_support import FAST_LATARNIA, offline_certificate, set_outage, verify_kod2, wait_for_file
from tests.daemon.support import (
    OTHER,
    SELLER,
    drop,
    invoice,
    load,
    read_json,
    sim_records,
    start_daemon,
    token_file,
    wait_logged,
    write_config,
)

PER_COMPANY = 12
KILLS = 4
OUTAGE_SECONDS = 6.0


@pytest.mark.timeout(180)
async def test_kill_9_while_offline_invoices_are_sent(sim_factory: Any, http: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", processing_delay_s=0.05))
    companies, certs = [], {}
    for name, nip, kind in (("acme", SELLER, "rsa"), ("beta", OTHER, "ec")):
        token = await token_file(http, sim.base_url, tmp_path, nip)
        cert, key = offline_certificate(tmp_path, name, nip, kind)
        certs[name] = cert
        companies.append({"name": name, "nip": nip, "token_file": str(token), "offline_certificate": str(cert),
                          "offline_private_key": str(key)})
    path = write_config(tmp_path, sim.base_url, companies, ksef=FAST_LATARNIA,
                        sending={"batch_threshold": 8, "offline_after_seconds": 600},
                        daemon={"rescan_interval_seconds": 0.3, "shutdown_grace_seconds": 3})
    config = load(path)
    files = {c: {f"{c.name}-{n:02d}.xml": invoice(f"KILL/{c.name}/{n}", seller=c.nip) for n in range(PER_COMPANY)}
             for c in config.companies}
    log = tmp_path / "daemon.log"
    rng = random.Random(20261206)
    running: list[asyncio.subprocess.Process] = []
    await set_outage(http, sim, 0, OUTAGE_SECONDS)
    try:
        running.append(proc := await start_daemon(path, log))
        await wait_logged(log, "daemon.started", 1, proc)
        for company, dropped in files.items():
            for name, data in dropped.items():
                drop(company.folders.outbox, name, data)
        for company, dropped in files.items():
            for name in dropped:
                await wait_for_file(company.folders.offline / f"{name.removesuffix('.xml')}.offline.json", 10)
        await wait_logged(log, "availability.changed", 2, proc, limit=30)      # failure, then available again
        for run in range(2, KILLS + 2):
            await asyncio.sleep(rng.uniform(0.05, 0.8))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL, f"run {run - 1} ended on its own; see {log}"
            running.append(proc := await start_daemon(path, log))
            await wait_logged(log, "daemon.started", run, proc)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        running.append(final := await start_daemon(path, log, "--once"))
        assert await asyncio.wait_for(final.wait(), 120) == 0, f"see {log}"
    finally:
        for proc in running:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    numbers: dict[str, str] = {}
    for company, dropped in files.items():
        expected = set()
        for name, data in dropped.items():
            stem = name.removesuffix(".xml")
            expected |= {f"{stem}.{suffix}" for suffix in ("offline.json", "kod1.png", "kod1.svg", "kod2.png",
                                                           "kod2.svg")}
            offline = read_json(company.folders.offline / f"{stem}.offline.json")
            assert offline["mode"] == "failure" and offline["invoicingMode"] == "Offline"
            verify_kod2(offline["kod2"]["link"], certs[company.name])
            record = read_json(company.folders.sent / f"{stem}.ksef.json")
            assert record["invoicingMode"] == "Offline" and record["ksefNumber"] == offline["ksefNumber"]
            numbers[sha256_b64(data)] = record["ksefNumber"]
            assert record["ksefNumber"].encode() in (company.folders.sent / f"{stem}.upo.xml").read_bytes()
        assert {p.name for p in company.folders.offline.iterdir()} == expected      # issued offline once each
        assert not list(company.folders.rejected.iterdir())
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sim_records(sim):
        by_hash[record["invoiceHash"]].append(record)
    assert set(by_hash) == set(numbers)
    for digest, records in by_hash.items():
        assert all(r["offlineMode"] for r in records)
        accepted = [r for r in records if r["status"]["code"] == 200]
        assert [r["ksefNumber"] for r in accepted] == [numbers[digest]]
        for other in (r for r in records if r["status"]["code"] != 200):
            assert other["status"]["code"] == 440
            assert other["status"]["extensions"]["originalKsefNumber"] == numbers[digest]
    async with await Store.open(config.state_db) as store:
        for company in config.companies:
            rows = await store.invoices.in_state(company.name, *InvoiceState)
            assert len(rows) == PER_COMPANY and {r.state for r in rows} == {InvoiceState.DONE}
