"""The daemon's lifecycle edges with real signals to a real `ksefd run` (issue #9, DESIGN.md convention 2).

* SIGTERM while invoices are in flight: a clean exit (0) after the drain, the online session closed in
  KSeF and in the state database, and nothing lost: a later run finishes every invoice exactly once.
* SIGINT twice while sends hang in KSeF (latency injected after the login): the second signal forces the
  drain, so the process ends promptly although the grace period is long; still safe: the next run resolves
  the in-flight sends by hash and every invoice is accepted exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, SessionState, Store
from tests.daemon.support import (
    SELLER,
    drop,
    invoice,
    load,
    sim_records,
    start_daemon,
    token_file,
    wait_logged,
    write_config,
)

INVOICES = 12


async def _company(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, *, grace: float,
                   processing_delay: float) -> tuple[Any, Path]:
    sim = await sim_factory(config=SimConfig(limits_profile="off", processing_delay_s=processing_delay))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    path = write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                        sending={"batch_threshold": 1000, "online_idle_close_seconds": 60},
                        daemon={"shutdown_grace_seconds": grace})
    return sim, path


def _drop_all(path: Path, prefix: str) -> dict[str, bytes]:
    outbox = load(path).companies[0].folders.outbox
    files = {f"{prefix}-{n:03d}.xml": invoice(f"{prefix}/{n:03d}") for n in range(INVOICES)}
    for name, data in files.items():
        drop(outbox, name, data)
    return files


async def _until_queued(path: Path, count: int) -> None:
    async with asyncio.timeout(20), await Store.open(load(path).state_db) as store:
        while len(await store.invoices.in_state("acme", *InvoiceState)) < count:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.05)


async def _finish_and_check(sim: Any, path: Path, log: Path, files: dict[str, bytes]) -> None:
    """A drain-mode run finishes everything; each invoice is accepted by KSeF exactly once."""
    final = await start_daemon(path, log, "--once")
    assert await asyncio.wait_for(final.wait(), 90) == 0, f"see {log}"
    config = load(path)
    async with await Store.open(config.state_db) as store:
        rows = await store.invoices.in_state("acme", *InvoiceState)
        assert len(rows) == len(files) and {r.state for r in rows} == {InvoiceState.DONE}
        assert not await store.sessions.unfinished("acme")
    accepted = Counter(r["invoiceHash"] for r in sim_records(sim) if r["status"]["code"] == 200)
    assert len(accepted) == len(files) and set(accepted.values()) == {1}
    sent = config.companies[0].folders.sent
    assert all((sent / f"{name.removesuffix('.xml')}.upo.xml").exists() for name in files)


@pytest.mark.timeout(150)
async def test_sigterm_while_invoices_are_in_flight_drains_and_closes_the_online_session(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, path = await _company(sim_factory, http, tmp_path, grace=10, processing_delay=2.0)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(path, log)
    try:
        await wait_logged(log, "daemon.started", 1, proc)
        files = _drop_all(path, "TERM")
        await wait_logged(log, "outbox.online_session", 1, proc)
        await asyncio.sleep(0.3)                          # sends on the wire, KSeF still processing them
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, f"see {log}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text(errors="replace")
    assert '"daemon.draining"' in text and '"daemon.stopped"' in text
    assert '"reason": "shutdown"' in text, "the online session was not closed at shutdown"
    async with await Store.open(load(path).state_db) as store:
        online = [s for s in await store.sessions.unfinished("acme", "online")]
    assert all(s.state != SessionState.OPEN for s in online), online
    assert sim_records(sim), "nothing was in flight when the signal came"
    await _finish_and_check(sim, path, log, files)


@pytest.mark.timeout(150)
async def test_a_second_sigint_forces_a_prompt_exit_that_is_still_safe(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, path = await _company(sim_factory, http, tmp_path, grace=60, processing_delay=0.01)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(path, log)
    try:
        await wait_logged(log, "daemon.started", 1, proc)
        await wait_logged(log, "daemon.connected", 1, proc)
        async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "latency=30"}) as resp:
            assert resp.status == 200
        files = _drop_all(path, "INT")
        await _until_queued(path, len(files))
        await asyncio.sleep(0.5)                           # sends now hang in KSeF for 30 s
        proc.send_signal(signal.SIGINT)
        await wait_logged(log, "daemon.draining", 1, proc)
        await asyncio.sleep(0.5)
        assert proc.returncode is None, "the first signal should drain for up to the 60 s grace"
        forced_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, f"see {log}"
        assert time.monotonic() - forced_at < 8, "the second signal did not force the stop"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert '"forced stop"' in log.read_text(errors="replace")
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": ""}) as resp:
        assert resp.status == 200
    await _finish_and_check(sim, path, log, files)
