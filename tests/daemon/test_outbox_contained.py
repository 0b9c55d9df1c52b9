"""A failure in one part of a company's outbox stays there (review of issue #9's lifecycle): intake failing
while a send is on the wire must not cancel that send and strand its invoice in SUBMITTING."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from ksefd import spool
from ksefd.daemon.service import serve
from ksefd.store import InvoiceState
from tests.daemon.support import drop, invoice, invoice_rows, one_company

S = InvoiceState


async def _until(config: Any, states: set[InvoiceState], limit: float = 20.0, count: int = 1) -> None:
    async with asyncio.timeout(limit):
        while len(rows := await invoice_rows(config, "acme")) < count or not {r.state for r in rows} <= states:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_intake_failing_while_a_send_is_on_the_wire_leaves_the_send_alone(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    outbox = config.companies[0].folders.outbox
    stop = asyncio.Event()
    with capture_logs() as logs:
        daemon = asyncio.create_task(serve(config, stop))
        try:
            drop(outbox, "FIRST.xml", invoice("CONTAINED/1"))
            await _until(config, {S.DONE})                     # connected, sending works
            async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "latency=3"}) as resp:
                assert resp.status == 200
            drop(outbox, "SLOW.xml", invoice("CONTAINED/2"))
            # On the wire for 3 s (its row first: intake is poked at once, the outbox must not go during its claim)
            await _until(config, {S.DONE, S.SUBMITTING}, count=2)
            aside = outbox.with_name("outbox-aside")
            outbox.rename(aside)                               # the ERP's share is gone: intake cannot scan it
            outbox.write_bytes(b"not a folder")
            await asyncio.sleep(1.0)
            outbox.unlink()
            aside.rename(outbox)
            async with http.post(f"{sim.root_url}/sim/faults", json={"spec": ""}) as resp:
                assert resp.status == 200
            await _until(config, {S.DONE}, limit=40)           # the slow send finished: not stranded
            drop(outbox, "AFTER.xml", invoice("CONTAINED/3"))  # and intake works again
            async with asyncio.timeout(20):
                while len(await invoice_rows(config, "acme")) < 3:  # noqa: ASYNC110 (the state is in SQLite)
                    await asyncio.sleep(0.05)
            await _until(config, {S.DONE})
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon, 30)
    events = [e["event"] for e in logs]
    assert "outbox.intake_failed" in events and "outbox.intake_failed.cleared" in events
    assert "daemon.task_failed" not in events


@pytest.mark.timeout(90)
async def test_files_claimed_just_before_the_outbox_went_go_on_when_it_is_back(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The working folder lives in the outbox (a rename on one file system): files claimed just before the
    ERP's share went away come back with it, without rows; they go on then, not only after a restart."""
    _sim, _, config = await one_company(sim_factory, http, tmp_path)
    outbox = config.companies[0].folders.outbox
    aside = outbox.with_name("outbox-aside")
    real_fsync_directory = spool.fsync_directory
    gone: list[Path] = []

    def share_lost_after_the_renames(path: Path) -> None:
        claimed = not (outbox / "CLAIMED.xml").exists()
        if path == outbox and claimed and not gone:    # the claim's renames are done; now the share goes away
            gone.append(outbox.rename(aside))
        real_fsync_directory(path)                     # a real fsync of a folder that is no longer there

    monkeypatch.setattr(spool, "fsync_directory", share_lost_after_the_renames)
    drop(outbox, "CLAIMED.xml", invoice("CONTAINED/4"))
    stop = asyncio.Event()
    with capture_logs() as logs:
        daemon = asyncio.create_task(serve(config, stop))
        try:
            async with asyncio.timeout(20):
                while "outbox.intake_failed" not in [e["event"] for e in logs]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert gone and list((aside / ".ksefd").glob("*CLAIMED.xml"))    # claimed, then the share went
            while aside.exists():                          # the share comes back (over what intake recreated)
                shutil.rmtree(outbox, ignore_errors=True)
                with contextlib.suppress(OSError):
                    aside.rename(outbox)
            drop(outbox, "NEXT.xml", invoice("CONTAINED/5"))   # the ERP goes on dropping
            await _until(config, {S.DONE}, count=2)        # without a restart: the claimed file got its row too
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon, 30)
    assert "outbox.orphans_adopted" in [e["event"] for e in logs]
    rows = await invoice_rows(config, "acme")
    assert sorted((r.file_name, r.state) for r in rows) == [("CLAIMED.xml", S.DONE), ("NEXT.xml", S.DONE)]
    assert (config.companies[0].folders.sent / "CLAIMED.xml").exists()
