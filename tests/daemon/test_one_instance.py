"""A real `ksefd run` as a service (issue #10 points 3, 4 and 6).

* a second daemon on the same state database is refused at once (exit 75) naming the first one's pid;
  `ksefd status` still works beside the running one; after a kill -9 the lock is gone with the process;
* a data folder or state database path ksefd cannot write: exit 78 with the path, what is wrong and the
  fix, never a traceback;
* `ksefd run --once` exits 3 when a company could not do what its config asks (here: a token KSeF
  cannot use puts it on hold).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import i18n
from ksefd.daemon.instance import StartupProblem, _fix, _reason, check_folder, check_writable
from ksefd.sim.config import SimConfig
from tests.daemon.support import (
    BUYER,
    OTHER,
    ROOT,
    SELLER,
    load,
    start_daemon,
    token_file,
    wait_logged,
    write_config,
)


async def _ksefd(*args: str, limit: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksefd", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.timeout(90)
async def test_a_second_daemon_on_the_same_state_database_is_refused_with_the_first_ones_pid(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    path = write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}])
    log = tmp_path / "first.log"
    first = await start_daemon(path, log)
    try:
        await wait_logged(log, "daemon.started", 1, first)
        code, _, err = await _ksefd("run", "-c", str(path), limit=20)
        assert code == 75, err
        # No language in the config: Polish, the default (issue #14).
        assert f"proces {first.pid} trzyma" in err and "działa już inny ksefd" in err and "Traceback" not in err
        assert "state.sqlite3" in err
        code, out, err = await _ksefd("status", "-c", str(path))
        assert code == 0, err
        assert "acme" in out
        code, out, err = await _ksefd("check", "-c", str(path), "--json")     # its own verdict, not the lock's
        assert code != 75 and "działa już inny ksefd" not in out + err and '"acme"' in out, out + err
        first.send_signal(signal.SIGKILL)      # the kernel drops the lock with the process
        await first.wait()
        second_log = tmp_path / "second.log"
        second = await start_daemon(path, second_log)
        try:
            await wait_logged(second_log, "daemon.started", 1, second)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()


async def test_a_data_folder_that_is_a_file_stops_the_start_with_exit_78_the_path_and_the_fix(
        tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER, "send": False,
                                                             "token_file": str(_token(tmp_path))}])
    (tmp_path / "data").write_text("not a folder")
    code, _, err = await _ksefd("run", "-c", str(path))
    assert code == 78, err
    assert str(tmp_path / "data") in err and "to plik, a nie folder. Przenieś ten plik" in err
    assert "Traceback" not in err


async def test_a_state_database_under_a_file_stops_the_start_with_exit_78(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER, "send": False,
                                                             "token_file": str(_token(tmp_path))}])
    path.write_text(path.read_text().replace('state_db = "state.sqlite3"', 'state_db = "blocker/state.sqlite3"'))
    (tmp_path / "blocker").write_text("a file where the folder of the state database should be")
    code, _, err = await _ksefd("run", "-c", str(path))
    assert code == 78, err
    assert "state_db" in err and str(tmp_path / "blocker") in err and "Traceback" not in err


async def test_a_state_database_that_is_not_one_stops_the_start_with_exit_78(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER, "send": False,
                                                             "token_file": str(_token(tmp_path))}])
    (tmp_path / "state.sqlite3").write_bytes(b"an invoice saved here by mistake " * 200)
    code, _, err = await _ksefd("run", "-c", str(path))
    assert code == 78, err
    assert "nie może być użyty jako baza stanu" in err and "zwolnij miejsce" in err and "Traceback" not in err


def test_a_full_disk_and_a_denied_folder_are_named_with_their_fix(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    denied = OSError(errno.EACCES, "Permission denied")
    (tmp_path / "file").write_text("x")
    with i18n.using("en"):
        assert _reason(full) == "the disk is full" and "Free some space" in _fix(full, tmp_path)
        assert _reason(denied) == "permission denied" and "chown" in _fix(denied, tmp_path)
        with pytest.raises(StartupProblem, match="cannot be created"):
            check_folder("company 'acme' outbox", tmp_path / "file" / "outbox")
    with i18n.using("pl"):
        assert _reason(full) == "dysk jest pełny" and "Zwolnij miejsce" in _fix(full, tmp_path)
        with pytest.raises(StartupProblem, match="nie można go utworzyć"):
            check_folder("company 'acme' outbox", tmp_path / "file" / "outbox")


@pytest.mark.timeout(60)
async def test_run_once_exits_3_when_a_company_could_not_log_in(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    good = await token_file(http, sim.base_url, tmp_path, SELLER)
    bad = tmp_path / "bad.token"
    bad.write_text("this is not a KSeF token\n", encoding="utf-8")
    path = write_config(tmp_path, sim.base_url, [
        {"name": "good", "nip": SELLER, "token_file": str(good)},
        {"name": "broken", "nip": "5265877635", "token_file": str(bad)}])
    code, _, err = await _ksefd("run", "-c", str(path), "--once")
    assert code == 3, err
    assert "broken: wstrzymana" in err and "bad.token" in err          # Polish by default
    assert "good:" not in err


def _token(folder: Path) -> Path:
    path = folder / "acme.token"
    path.write_text("unused\n", encoding="utf-8")
    return path


def test_the_start_up_probe_is_fsynced_once_per_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16 point 4: 1 000 companies have 4 000 folders; an fsync in each delayed the first login by ~4 s.
    A full disk is a property of the file system, so the first folder of each is probed with an fsync."""
    companies = []
    for n, nip in enumerate((SELLER, BUYER, OTHER)):
        (tmp_path / f"t{n}.token").write_text("token\n", encoding="utf-8")
        companies.append({"name": f"c{n}", "nip": nip, "token_file": str(tmp_path / f"t{n}.token"), "receive": True})
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", companies))
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    check_writable(config)
    assert (tmp_path / "data" / "c2" / "outbox").is_dir() and (tmp_path / "data" / "c2" / "inbox").is_dir()
    assert len(fsyncs) == 1, fsyncs
    assert not list(tmp_path.rglob(".ksefd-write-test-*"))
