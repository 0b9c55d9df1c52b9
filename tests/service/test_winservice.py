"""The parts of the Windows service that are plain Python (ksefd/winservice.py), on any OS: argument
handling, default paths, and the stop path, which must be the same drain of the same `serve()` as SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path, PureWindowsPath
from typing import Any

import aiohttp
import pytest

from ksefd.store import Store
from ksefd.winservice import (
    ServiceRunner,
    default_paths,
    framework_argv,
    stop_wait_hint_ms,
)
from tests.daemon.support import drop, invoice, one_company, read_json


def test_default_paths_are_under_program_data() -> None:
    paths = default_paths({"ProgramData": r"D:\Dane"})
    assert paths.config == PureWindowsPath(r"D:\Dane\ksefd\ksefd.toml")
    assert paths.data == PureWindowsPath(r"D:\Dane\ksefd\data")
    assert paths.log == PureWindowsPath(r"D:\Dane\ksefd\logs\ksefd.log")
    assert default_paths({}).root == PureWindowsPath(r"C:\ProgramData\ksefd")


def test_framework_argv() -> None:
    assert framework_argv("install") == ["ksefd", "--startup", "auto", "install"]
    assert framework_argv("install", "delayed") == ["ksefd", "--startup", "delayed", "install"]
    assert framework_argv("stop", wait=60) == ["ksefd", "--wait", "60", "stop"]
    assert framework_argv("remove") == ["ksefd", "remove"]
    with pytest.raises(ValueError, match="unknown service action"):
        framework_argv("reload")
    with pytest.raises(ValueError, match="startup type"):
        framework_argv("install", "sometimes")


def test_stop_wait_hint_covers_the_drain() -> None:
    class Grace:
        shutdown_grace_seconds = 45.0
    assert stop_wait_hint_ms(Grace()) == 75_000     # type: ignore[arg-type]
    assert stop_wait_hint_ms(None) == 60_000


def test_the_cli_says_what_to_use_outside_windows() -> None:
    if sys.platform == "win32":
        pytest.skip("on Windows the command talks to the Service Control Manager")
    result = subprocess.run([sys.executable, "-m", "ksefd", "service", "install"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "w Linuksie zainstaluj jednostkę systemd" in result.stderr    # Polish by default
    result = subprocess.run([sys.executable, "-m", "ksefd", "service", "reload"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr


async def test_scm_stop_drains_the_real_serve(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The service thread runs serve(); SvcStop comes from another thread: the invoice in flight is finished
    (the same drain as SIGTERM) and the daemon shuts down cleanly."""
    _, _, config = await one_company(sim_factory, http, tmp_path)
    runner = ServiceRunner(config)
    service = asyncio.create_task(asyncio.to_thread(runner.run))
    assert await asyncio.to_thread(runner.started.wait, 10)
    folders = config.company("acme").folders
    drop(folders.outbox, "FV 1.xml", invoice("FV/1"))
    for _ in range(600):                              # the invoice is accepted by the service's serve()
        if (folders.sent / "FV 1.ksef.json").exists():
            break
        await asyncio.sleep(0.05)
    scm = threading.Thread(target=runner.stop)       # the Service Control Manager's thread
    scm.start()
    scm.join()
    async with asyncio.timeout(30):
        await service
    assert read_json(folders.sent / "FV 1.ksef.json")["ksefNumber"]
    async with await Store.open(config.state_db) as store:
        beats = [b for b in await store.heartbeat.read() if b.component == "daemon"]
    assert beats and beats[0].detail.get("stopped") is True      # _shutdown ran: the same drain as SIGTERM
    runner.stop()                                                  # a second stop after the end is harmless


async def test_a_stop_before_the_loop_runs_still_stops(sim_factory: Any, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    runner = ServiceRunner(config)
    runner.stop()
    async with asyncio.timeout(30):
        await asyncio.to_thread(runner.run)
    assert runner.started.is_set()


def test_run_configured_with_a_bad_config_exits_78_and_logs(tmp_path: Path) -> None:
    (tmp_path / "ksefd.toml").write_text("[daemon]\nnonsense = 1\n")
    config, log = str(tmp_path / "ksefd.toml"), str(tmp_path / "logs" / "k.log")
    code = ("import sys; from pathlib import Path; from ksefd.winservice import run_configured; "
            f"sys.exit(run_configured(Path({config!r}), Path({log!r}), lambda runner: None))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 78
    assert "błędna konfiguracja w pliku" in (tmp_path / "logs" / "k.log").read_text()      # invalid configuration
