"""Logs (issue #12 point 8): JSON lines when not on a TTY, `<N>`-prefixed plain lines when stderr is systemd's
journal stream ($JOURNAL_STREAM), one correlation id per invoice (its row id, also in the state database's
events) on every outbox line about it, and a failing login logged when it starts and when it clears."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from ksefd.daemon.failures import LastingFailure
from ksefd.logs import choose_format, is_journal, render_journal
from ksefd.store import Store
from tests.daemon.support import OTHER, ROOT, drop, invoice, one_company, token_file, write_config
from tests.service.http_support import wait_until


def test_journal_lines_carry_syslog_priorities_and_stay_one_line() -> None:
    line = render_journal(None, "error", {"event": "outbox.rejected", "level": "error", "timestamp": "x",
                                          "file": "FV 1.xml", "message": 'bad "a"\nsecond'})
    assert line == '<3>outbox.rejected file="FV 1.xml" message="bad \\"a\\"\\nsecond"'
    assert render_journal(None, "info", {"event": "daemon.started", "level": "info"}) == "<6>daemon.started"
    assert render_journal(None, "warning", {"event": "w", "level": "warning", "n": 1}) == "<4>w n=1"
    assert render_journal(None, "debug", {"event": "d", "level": "debug"}).startswith("<7>")


def test_auto_picks_the_journal_only_for_the_stream_systemd_named(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        stat = os.fstat(a.fileno())
        environ = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert is_journal(a, environ) and not is_journal(b, environ) and not is_journal(a, {})
        assert choose_format("auto", b) == "json" and choose_format("console", a) == "console"


async def test_the_daemon_under_the_journal_writes_priorities(sim_factory: Any, http: aiohttp.ClientSession,
                                                             tmp_path: Path) -> None:
    """A real `ksefd run` whose stderr is the journal stream: info lines are <6>, the hold of a company whose
    token lacks InvoiceWrite is <3> (an error a person must act on)."""
    sim, token, _ = await one_company(sim_factory, http, tmp_path)
    readonly = await token_file(http, sim.base_url, tmp_path, OTHER, ["InvoiceRead"])
    config = write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": "9999999999", "token_file": str(token)},
                                                   {"name": "ro", "nip": OTHER, "token_file": str(readonly)}])
    drop(tmp_path / "data" / "ro" / "outbox", "RO-1.xml", invoice("RO/1", seller=OTHER))
    log = tmp_path / "journal.log"
    handle = log.open("wb")
    stat = os.fstat(handle.fileno())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "run", "-c", str(config), cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=handle, env=env)
    handle.close()
    try:
        async def held() -> bool:
            return "<3>outbox.company_on_hold" in await asyncio.to_thread(log.read_text)
        await wait_until(held, "the hold, logged as an error")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines[:5]
    assert any(line.startswith("<6>daemon.started ") for line in lines)
    assert not any(line.lstrip("<>0123456789").startswith("{") for line in lines)     # not JSON


async def test_every_outbox_line_about_an_invoice_carries_its_id(sim_factory: Any, http: aiohttp.ClientSession,
                                                                tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    drop(config.company("acme").folders.outbox, "FV-1.xml", invoice("FV/1"))
    drop(config.company("acme").folders.outbox, "FV-2.xml", invoice("FV/2", seller=OTHER))   # rejected locally
    log = tmp_path / "run.log"
    with log.open("wb") as handle:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "--once", "-c", str(config.source),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    about = {e["event"]: e for e in events if e.get("file") in ("FV-1.xml", "FV-2.xml")}
    assert {"outbox.accepted", "outbox.rejected"} <= set(about)
    async with await Store.open(config.state_db) as store:
        rows = {r.file_name: r.id for r in await store.invoices.in_state("acme", *_all_states())}
        for name, event in (("FV-1.xml", "outbox.accepted"), ("FV-2.xml", "outbox.rejected")):
            assert about[event]["invoice"] == rows[name]
            assert {e.to_state for e in await store.events.for_invoice(rows[name])} >= {"claimed"} | (
                {"accepted"} if name == "FV-1.xml" else {"rejected"})


def _all_states() -> list[Any]:
    from ksefd.store import InvoiceState
    return list(InvoiceState)


def test_a_lasting_failure_is_logged_when_it_starts_slowly_and_when_it_clears() -> None:
    now = [0.0]
    with structlog.testing.capture_logs() as captured:
        failing = LastingFailure(structlog.get_logger("t"), "x.failed", interval=300, monotonic=lambda: now[0])
        for second in range(0, 900, 5):          # every 5 s for 15 minutes
            now[0] = float(second)
            failing.failed(error="down")
        now[0] = 900.0
        failing.cleared()
    names = [(c["event"], c.get("times")) for c in captured]
    assert names == [("x.failed", None), ("x.failed", 61), ("x.failed", 121), ("x.failed.cleared", 180)]
