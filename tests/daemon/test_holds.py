"""A hold lasts only as long as its cause (issue #10 point 2), and `send = false` gives files back.

* a hold left by a previous run is re-examined at start-up: the fixed token is used at once, not after
  `hold_retry_seconds` (900 s here), and the hold is gone from `ksefd status`;
* a credential file that changes while the daemon runs is noticed within seconds;
* `ksefd resume -c CONFIG COMPANY` reaches a running daemon when nothing it can see has changed;
* a company switched to `send = false` gets its claimed-but-unsent files back in outbox/, bytes untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import SystemClock
from ksefd.daemon.service import serve
from ksefd.daemon.status import gather, render
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.support import (
    ROOT,
    SELLER,
    drain,
    drop,
    invoice,
    invoice_rows,
    load,
    sim_records,
    start_daemon,
    token_file,
    wait_logged,
    write_config,
)

S = InvoiceState
SLOW_HOLD = {"hold_retry_seconds": 900}


async def _broken_company(sim_factory: Any, http: aiohttp.ClientSession, folder: Path,
                          **company: Any) -> tuple[Any, Path, str, Path]:
    """A company whose token file holds a malformed token of the right length; returns the simulator, the
    token file, the good token text and the config file."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    good = (await token_file(http, sim.base_url, folder, SELLER)).read_text(encoding="utf-8")
    path = folder / "acme.token"
    path.write_text(good.replace("|", "#"), encoding="utf-8")          # same size, unusable
    config = write_config(folder, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(path),
                                                  **company}], sending=SLOW_HOLD)
    return sim, path, good, config


async def _hold(config_path: Path) -> Any:
    async with await Store.open(load(config_path).state_db) as store:
        return await store.holds.get("acme")


async def _status_text(config_path: Path) -> str:
    config = load(config_path)
    async with await Store.open(config.state_db) as store:
        return render(await gather(store, config, SystemClock()))


async def test_a_hold_from_the_last_run_is_re_examined_at_start_up_not_after_hold_retry_seconds(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, token, good, path = await _broken_company(sim_factory, http, tmp_path)
    config = load(path)
    drop(config.companies[0].folders.outbox, "FV-1.xml", invoice("HOLD/START/1"))
    await drain(config)
    shown = await _status_text(path)
    assert (await _hold(path)) is not None and "błędną postać" in shown and "WSTRZYMANA od" in shown
    assert "malformed" not in shown and "copy the whole token" not in shown      # the client's words in Polish too
    assert [r.state for r in await invoice_rows(config, "acme")] in ([S.HELD], [S.QUEUED])   # not sent
    token.write_text(good, encoding="utf-8")                 # the person fixes the token, then restarts
    await drain(config)
    assert (await _hold(path)) is None
    assert "WSTRZYMANA" not in await _status_text(path)        # "on hold" (Polish by default, issue #14)
    assert [r.state for r in await invoice_rows(config, "acme")] == [S.DONE]
    assert len(sim_records(sim)) == 1


@pytest.mark.timeout(60)
async def test_a_changed_credential_file_clears_the_hold_of_a_running_daemon_within_seconds(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, token, good, path = await _broken_company(sim_factory, http, tmp_path)
    config = load(path)
    drop(config.companies[0].folders.outbox, "FV-1.xml", invoice("HOLD/FILE/1"))
    stop = asyncio.Event()
    running = asyncio.create_task(serve(config, stop))
    try:
        async with asyncio.timeout(20):
            while await _hold(path) is None:  # noqa: ASYNC110 (the daemon writes it)
                await asyncio.sleep(0.1)
        token.write_text(good.strip() + "\n\n", encoding="utf-8")      # fixed (a different size and mtime)
        async with asyncio.timeout(15):                                 # hold_retry_seconds is 900
            while [r.state for r in await invoice_rows(config, "acme")] != [S.DONE]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert await _hold(path) is None and "WSTRZYMANA" not in await _status_text(path)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert len(sim_records(sim)) == 1


async def _resume(path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksefd", "resume", "-c", str(path), "acme", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ})
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(90)
async def test_ksefd_resume_reaches_the_running_daemon_and_clears_the_hold(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, token, good, path = await _broken_company(sim_factory, http, tmp_path)
    config = load(path)
    drop(config.companies[0].folders.outbox, "FV-1.xml", invoice("HOLD/RESUME/1"))
    log = tmp_path / "daemon.log"
    proc = await start_daemon(path, log)
    try:
        await wait_logged(log, "outbox.company_on_hold", 1, proc)
        # Fixed in a way the daemon cannot see (same size, same mtime: e.g. restored from a backup).
        before = token.stat()
        token.write_text(good, encoding="utf-8")
        os.utime(token, ns=(before.st_atime_ns, before.st_mtime_ns))
        await asyncio.sleep(3)                               # longer than the daemon's look at the files
        assert await _hold(path) is not None
        code, out = await _resume(path)
        assert code == 0 and "wznowiona" in out, out            # resumed (the config's default language)
        async with asyncio.timeout(20):
            while [r.state for r in await invoice_rows(config, "acme")] != [S.DONE]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert "WSTRZYMANA" not in await _status_text(path)        # "on hold" (Polish by default, issue #14)
        code, out = await _resume(path)
        assert code == 0 and "nie jest wstrzymana" in out      # not on hold
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert len(sim_records(sim)) == 1
    assert '"ksefd resume"' in log.read_text(errors="replace")


async def test_switching_to_send_false_gives_claimed_files_back_untouched_and_status_says_so(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, _, _, path = await _broken_company(sim_factory, http, tmp_path)
    config = load(path)
    outbox = config.companies[0].folders.outbox
    files = {f"FV-{n}.xml": invoice(f"HOLD/OFF/{n}") for n in range(3)}
    for name, data in files.items():
        drop(outbox, name, data)
    await drain(config)                                       # claimed, then held: the token is broken
    assert {r.state for r in await invoice_rows(config, "acme")} <= {S.HELD, S.QUEUED}
    assert not list(outbox.glob("*.xml"))
    path.write_text(path.read_text().replace("[[companies]]\n", "[[companies]]\nsend = false\n"),
                    encoding="utf-8")
    config = load(path)
    assert not config.companies[0].send
    await drain(config)
    assert {p.name: p.read_bytes() for p in outbox.glob("*.xml")} == files
    assert not list(outbox.glob("*.state.json"))
    assert not [p for p in (outbox / ".ksefd").iterdir()]
    assert {r.state for r in await invoice_rows(config, "acme")} == {S.RETURNED}
    text = await _status_text(path)
    assert "wysyłka wyłączona" in text and "plików odłożonych z powrotem do outbox/: 3" in text
    await drain(config)                                       # a later run leaves them alone
    assert {p.name: p.read_bytes() for p in outbox.glob("*.xml")} == files
    assert not sim_records(sim)


async def test_a_re_drop_while_the_original_is_on_hold_waits_and_gets_the_originals_result(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Issue #10 point 7, the original still on its way: the re-drop is neither sent nor rejected; it waits
    (across a restart) and gets the original's result under its own name once the original is accepted."""
    sim, token, good, path = await _broken_company(sim_factory, http, tmp_path)
    config = load(path)
    folders = config.companies[0].folders
    data = invoice("HOLD/REDROP/1")
    drop(folders.outbox, "FV-1.xml", data)
    await drain(config)                                       # on hold: the original waits
    drop(folders.outbox, "FV-1-again.xml", data)
    await drain(config)
    states = {r.file_name: r.state for r in await invoice_rows(config, "acme")}
    assert states["FV-1-again.xml"] == S.CLAIMED and states["FV-1.xml"] in (S.QUEUED, S.HELD)
    waiting = (folders.outbox / "FV-1-again.state.json").read_text(encoding="utf-8")
    assert "FV-1.xml" in waiting and "nie jest wysyłany ponownie" in waiting   # not sent again
    token.write_text(good, encoding="utf-8")
    await drain(config)
    assert {r.file_name: r.state for r in await invoice_rows(config, "acme")} == {
        "FV-1.xml": S.DONE, "FV-1-again.xml": S.REDROP}
    original = json.loads((folders.sent / "FV-1.ksef.json").read_bytes())
    record = json.loads((folders.sent / "FV-1-again.ksef.json").read_bytes())
    assert record["redrop"] is True and record["ksefNumber"] == original["ksefNumber"]
    assert (folders.sent / "FV-1-again.upo.xml").read_bytes() == (folders.sent / "FV-1.upo.xml").read_bytes()
    assert not list(folders.rejected.iterdir()) and not list(folders.outbox.glob("*.state.json"))
    assert len(sim_records(sim)) == 1
