"""`serve()` speaks sd_notify as systemd/ksefd.service (Type=notify, WatchdogSec=) expects: READY=1 after start-up,
WATCHDOG=1 from its loop, STATUS= with the one-line summary, STOPPING=1 when the drain begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.daemon.service import serve
from tests.daemon.support import one_company


async def test_serve_speaks_sd_notify(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, stop))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 30)
        got: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(sock.recv(4096).decode())
    assert got[0] == "READY=1" and "WATCHDOG=1" in got and got[-1] == "STOPPING=1"
    assert any(m.startswith("STATUS=1 company: 0 queued") for m in got)
