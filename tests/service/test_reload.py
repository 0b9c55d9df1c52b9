"""Reload without restart (issue #14 point 4): SIGHUP to a real `ksefd run` adds a company, removes one and
rejects a broken config while sending continues; `ksefd reload -c` does the same through the state database
(the way that also works for a Windows service)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ksefd.config import ConfigError, load_config
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sandbox import make_taxpayer

A, B, C = ("firma-a", "5260250274"), ("firma-b", "5265877635"), ("firma-c", "1111111111")
BUYER = "9999999999"


def _company(name: str, nip: str, folder: Path, *, send: bool = True, receive: bool = False,
             enabled: bool = True) -> str:
    return (f'[[companies]]\nname = "{name}"\nnip = "{nip}"\nsend = {str(send).lower()}\n'
            f'receive = {str(receive).lower()}\nenabled = {str(enabled).lower()}\n'
            f'token_file = "{folder / (name + ".token")}"\n\n')


def _config(base_url: str, companies: str, daemon: str = "daemon", language: str = "en") -> str:
    return (f'[ksef]\nenvironment = "test"\nbase_url = "{base_url}"\n\n[{daemon}]\ndata_dir = "data"\n'
            f'language = "{language}"\n'
            f'settle_seconds = 0.2\nrescan_interval_seconds = 1\nshutdown_grace_seconds = 5\nlog_format = "json"\n'
            f'\n{companies}')


def _drop(folder: Path, company: tuple[str, str], number: str) -> Path:
    outbox = folder / "data" / company[0] / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    template = next(n for n in sample_names() if not has_attachment(sample_bytes(n)))
    name = number.replace("/", "-")
    temp = outbox / f"{name}.xml.tmp"
    temp.write_bytes(make_invoice(sample_bytes(template), number=number, seller_nip=company[1], buyer_nip=BUYER,
                                  issue_date=dt.date.today()))
    temp.rename(outbox / f"{name}.xml")
    return folder / "data" / company[0] / "sent" / f"{name}.ksef.json"


class Daemon:
    """`ksefd run` as a subprocess; its JSON log lines collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "text", "text": line.decode(errors="replace")})

    async def wait_event(self, name: str, check: Callable[[dict[str, Any]], bool] = lambda e: True,
                         within: float = 30.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            for event in self.events:
                if event.get("event") == name and check(event):
                    return event
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {name} in the daemon's log:\n" + "\n".join(map(str, self.events[-30:])))


async def _until(path: Path, within: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while not await asyncio.to_thread(path.exists):
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.1)
    return dict(json.loads(await asyncio.to_thread(path.read_text, "utf-8")))


async def _ksefd(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout(180)
async def test_sighup_adds_removes_and_rejects_while_sending_goes_on(sim, tmp_path: Path) -> None:
    for name, nip in (A, B, C):
        await make_taxpayer(sim.base_url, nip, ["InvoiceRead", "InvoiceWrite"], tmp_path / f"{name}.token")
    config = tmp_path / "ksefd.toml"
    config.write_text(_config(sim.base_url, _company(*A, tmp_path) + _company(*B, tmp_path)), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "run", "-c", str(config),
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    daemon = Daemon(process)
    try:
        await daemon.wait_event("daemon.started")
        await _until(_drop(tmp_path, A, "FV/A/1"))
        await _until(_drop(tmp_path, B, "FV/B/1"))

        # Add C, remove B: SIGHUP.
        config.write_text(_config(sim.base_url, _company(*A, tmp_path) + _company(*C, tmp_path)), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        reloaded = await daemon.wait_event("daemon.reloaded")
        assert reloaded["added"] == ["firma-c"] and reloaded["removed"] == ["firma-b"]
        assert reloaded["unchanged"] == ["firma-a"] and reloaded["changed"] == []
        await _until(_drop(tmp_path, C, "FV/C/1"))
        await _until(_drop(tmp_path, A, "FV/A/2"))
        late_b = _drop(tmp_path, B, "FV/B/2")         # B is no longer run: its file stays in its outbox

        # A broken config: refused with the words `ksefd run` prints at start; A and C keep sending.
        config.write_text(_config(sim.base_url, _company(*A, tmp_path), daemon="deamon"), encoding="utf-8")
        with pytest.raises(ConfigError) as at_start:
            load_config(config)
        process.send_signal(signal.SIGHUP)
        rejected = await daemon.wait_event("daemon.reload_rejected")
        assert rejected["problems"] == at_start.value.english         # the JSON log keeps English
        assert any("did you mean [daemon]?" in p for p in rejected["problems"])
        await _until(_drop(tmp_path, C, "FV/C/2"))
        await _until(_drop(tmp_path, A, "FV/A/3"))
        assert process.returncode is None

        # `ksefd reload -c` (the Windows way, through the state database): C switched off, B back.
        config.write_text(_config(sim.base_url, _company(*A, tmp_path) + _company(*B, tmp_path)
                                  + _company(*C, tmp_path, enabled=False)), encoding="utf-8")
        code, out, err = await _ksefd("reload", "-c", str(config))
        assert code == 0, err
        assert "added: firma-b" in out and "removed: firma-c" in out and "unchanged: firma-a" in out
        await _until(late_b)
        parked_c = _drop(tmp_path, C, "FV/C/3")
        await _until(_drop(tmp_path, A, "FV/A/4"))
        await asyncio.sleep(1.5)                      # more than C's settle time and rescan interval
        assert not parked_c.exists() and (parked_c.parent.parent / "outbox" / "FV-C-3.xml").exists()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
        await daemon.reader
    assert code == 0
    assert sum(1 for e in daemon.events if e.get("event") == "daemon.started") == 1    # never restarted


@pytest.mark.timeout(60)
async def test_ksefd_reload_says_why_a_config_is_refused(sim, tmp_path: Path) -> None:
    """A data_dir change cannot be applied to a running daemon: refused, with the fix (restart)."""
    await make_taxpayer(sim.base_url, A[1], ["InvoiceRead", "InvoiceWrite"], tmp_path / f"{A[0]}.token")
    config = tmp_path / "ksefd.toml"
    text = _config(sim.base_url, _company(*A, tmp_path)).replace('language = "en"\n', "")     # Polish by default
    config.write_text(text, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "run", "-c", str(config),
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    daemon = Daemon(process)
    try:
        await daemon.wait_event("daemon.started")
        await asyncio.sleep(0.5)                    # its first heartbeat: `ksefd reload` sees it running
        moved = tmp_path / "moved.toml"
        moved.write_text(text.replace('data_dir = "data"', 'data_dir = "data"\nstate_db = "data/state.sqlite3"'),
                         encoding="utf-8")
        config.write_text(text.replace('data_dir = "data"', 'data_dir = "elsewhere"'), encoding="utf-8")
        code, out, err = await _ksefd("reload", "-c", str(moved))       # the state DB the daemon uses
        assert code == 78, out + err
        assert "[daemon] data_dir" in err and "nie może się zmienić, gdy ksefd działa: uruchom go ponownie" in err
        await _until(_drop(tmp_path, A, "FV/A/9"))                       # still sending from data/
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await daemon.reader


@pytest.mark.timeout(90)
async def test_a_company_added_on_a_new_ksef_target_gets_its_availability_monitor(sim, sim_factory,
                                                                                  tmp_path: Path) -> None:
    """Offline issuing (issue #11) needs the target's Latarnia watched: a reload that adds a company on a KSeF
    no company used before starts that target's monitor, without a restart."""
    other = await sim_factory()
    await make_taxpayer(sim.base_url, A[1], ["InvoiceRead", "InvoiceWrite"], tmp_path / f"{A[0]}.token")
    await make_taxpayer(other.base_url, C[1], ["InvoiceRead", "InvoiceWrite"], tmp_path / f"{C[0]}.token")
    config = tmp_path / "ksefd.toml"
    config.write_text(_config(sim.base_url, _company(*A, tmp_path)), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "run", "-c", str(config),
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    daemon = Daemon(process)
    try:
        await daemon.wait_event("daemon.started")
        await daemon.wait_event("availability.latarnia_status", lambda e: e["target"] == f"test:{sim.base_url}")
        on_other = _company(*C, tmp_path).replace("[[companies]]\n", f'[[companies]]\nenvironment = "test"\n'
                                                                      f'base_url = "{other.base_url}"\n')
        config.write_text(_config(sim.base_url, _company(*A, tmp_path) + on_other), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        assert (await daemon.wait_event("daemon.reloaded"))["added"] == ["firma-c"]
        status = await daemon.wait_event("availability.latarnia_status",
                                         lambda e: e["target"] == f"test:{other.base_url}")
        assert status["status"] == "AVAILABLE"
        await _until(_drop(tmp_path, C, "FV/C/1"))
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await daemon.reader
