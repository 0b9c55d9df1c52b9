"""kill -9 at random moments never loses an invoice and never submits one twice (issue #5 item 6).

The daemon runs as a real subprocess (`python -m ksefd run`) against the simulator, which runs in this
test process and is never killed. 500 invoices: half dropped at once (a backlog: batch sessions), the rest
in small waves between kills (a trickle: the online session). The daemon is killed with SIGKILL at 20+
random moments, restarted each time, and finally run in drain mode to the end. Then every file must be in
sent/ with its KSeF number and UPO, and the simulator's own records must show each invoice accepted once;
any second submission must be a 440 pointing at the same KSeF number (a lost answer resolved by hash).
"""

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
from tests.daemon.support import (
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

ROOT = Path(__file__).resolve().parents[2]
INVOICES = 500
KILLS = 22


@pytest.mark.timeout(240)
async def test_sigkill_at_random_moments(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", processing_delay_s=0.01))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    path = write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                        sending={"batch_threshold": 60, "batch_max_invoices": 80, "online_idle_close_seconds": 2},
                        daemon={"rescan_interval_seconds": 0.3, "shutdown_grace_seconds": 3})
    config = load(path)
    company = config.companies[0]
    rng = random.Random(20261122)
    files = {f"FV-{n:04d}.xml": invoice(f"CRASH/{n:04d}") for n in range(INVOICES)}
    names = list(files)
    waves = [names[:250]] + [names[250 + i::KILLS] for i in range(KILLS)]
    log = tmp_path / "daemon.log"

    running: list[asyncio.subprocess.Process] = []
    try:
        for run in range(1, KILLS + 1):
            for name in waves[run - 1]:
                drop(company.folders.outbox, name, files[name])
            running.append(proc := await start_daemon(path, log))
            await wait_logged(log, "daemon.started", run, proc)
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL, f"run {run} ended on its own; see {log}"
        for name in waves[KILLS]:
            drop(company.folders.outbox, name, files[name])
        running.append(final := await start_daemon(path, log, "--once"))
        assert await asyncio.wait_for(final.wait(), 150) == 0, f"see {log}"
    finally:
        for proc in running:          # never leave a daemon behind, whatever failed
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # Every file is in sent/ with its exact bytes, its KSeF number and its UPO; nothing lost or rejected.
    numbers: dict[str, str] = {}
    for name, data in files.items():
        stem = name.removesuffix(".xml")
        assert (company.folders.sent / name).read_bytes() == data
        numbers[sha256_b64(data)] = read_json(company.folders.sent / f"{stem}.ksef.json")["ksefNumber"]
        assert numbers[sha256_b64(data)].encode() in (company.folders.sent / f"{stem}.upo.xml").read_bytes()
    assert not list(company.folders.rejected.iterdir())
    assert sorted(p.name for p in company.folders.outbox.iterdir()) == [".ksefd", "offline"]
    assert not list((company.folders.outbox / ".ksefd").iterdir())

    # KSeF's side: one acceptance per invoice; a second submission only as a 440 of the same document.
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sim_records(sim):
        by_hash[record["invoiceHash"]].append(record)
    assert set(by_hash) == set(numbers)
    repeats = 0
    for digest, records in by_hash.items():
        accepted = [r for r in records if r["status"]["code"] == 200]
        assert [r["ksefNumber"] for r in accepted] == [numbers[digest]]
        for other in (r for r in records if r["status"]["code"] != 200):
            repeats += 1
            assert other["status"]["code"] == 440, other["status"]
            assert other["status"]["extensions"]["originalKsefNumber"] == numbers[digest]

    async with await Store.open(config.state_db) as store:
        rows = await store.invoices.in_state("acme", *InvoiceState)
    assert len(rows) == INVOICES and {r.state for r in rows} == {InvoiceState.DONE}
    print(f"\n{KILLS} kills; {repeats} repeated submissions, each a 440 resolved as the same document")
