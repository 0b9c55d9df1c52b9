"""No single outbox entry, of any name, type or owner, stops a company (issue #15 points 1-3).

* a name near the file system's 255-byte limit is claimed, sent and answered under a shortened stem;
* a symlink, FIFO, folder, socket or device file named `*.xml` is never followed or read, but told: moved into
  rejected/ with NAME.error.json, a log line and a REJECTED row that `ksefd status` shows;
* a file ksefd's user cannot read (another user's 0600 file): the daemon, run as a user who cannot read it,
  moves it into rejected/ with a precise error, sends the rest of the drop, and adopts such a file left in
  the claim folder by a crash without dying at each start.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.sim.config import SimConfig
from tests.daemon.support import (
    ROOT,
    drain,
    drop,
    invoice,
    invoice_rows,
    load,
    one_company,
    read_json,
    sim_records,
    token_file,
    write_config,
)

LONG = "FV " + "ż" * 121 + ".xml"      # 249 bytes: claimed as <16 hex>.NAME it would pass 255


async def test_a_name_near_the_limit_is_sent_and_answered(sim_factory: Any, http: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    folders = config.companies[0].folders
    drop(folders.outbox, LONG, invoice("LONG/1"))
    drop(folders.outbox, "FV ż" + "x" * 240 + ".xml", invoice("LONG/2")[:-30])     # rejected, also long
    drop(folders.outbox, "short.xml", invoice("LONG/3"))

    await drain(config)

    assert len(sim_records(sim)) == 2
    sent = sorted(p.name for p in folders.sent.iterdir())
    records = [read_json(folders.sent / n) for n in sent if n.endswith(".ksef.json")]
    assert sorted(r["file"] for r in records) == sorted([LONG, "short.xml"])      # the whole name kept
    assert all(len(n.encode()) <= 255 for n in sent)
    assert sum(n.endswith(".upo.xml") for n in sent) == 2
    errors = [read_json(p) for p in folders.rejected.glob("*.error.json")]
    assert [e["file"] for e in errors] == ["FV ż" + "x" * 240 + ".xml"] and errors[0]["code"] == "not-well-formed"
    rows = await invoice_rows(config, "acme")
    assert sorted(str(r.state) for r in rows) == ["done", "done", "rejected"]
    assert not [p for p in (folders.outbox / ".ksefd").iterdir()]                # nothing left claimed


def _make_odd(kind: str, path: Path, target: Path) -> None:
    if kind == "symbolic-link":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
        (path / "inner.xml").write_bytes(target.read_bytes())
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    elif kind == "device-file":
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))     # like /dev/null
        except PermissionError:
            pytest.skip("creating a device file needs CAP_MKNOD (root)")


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _other_file_system(folder: Path, than: Path) -> bool:
    return folder.is_dir() and folder.stat().st_dev != than.stat().st_dev


@pytest.mark.parametrize("kind", ["symbolic-link", "fifo", "folder", "socket", "device-file"])
async def test_an_entry_that_is_no_file_is_told_not_followed(kind: str, sim_factory: Any,
                                                              http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    folders = config.companies[0].folders
    folders.outbox.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere.xml"
    elsewhere.write_bytes(invoice("ODD/1"))
    _make_odd(kind, folders.outbox / "FV 1.xml", elsewhere)
    drop(folders.outbox, "FV 2.xml", invoice("ODD/2"))

    await drain(config, limit=30)

    assert len(sim_records(sim)) == 1                                  # only the real file; the link not followed
    assert _lexists(folders.rejected / "FV 1.xml")                     # moved as it is
    assert not _lexists(folders.outbox / "FV 1.xml")
    error = read_json(folders.rejected / "FV 1.error.json")
    assert error["code"] == kind and error["file"] == "FV 1.xml" and error["hint"]
    assert "FV 1.xml" in error["message"]
    rows = {r.file_name: r for r in await invoice_rows(config, "acme")}
    assert str(rows["FV 1.xml"].state) == "rejected" and rows["FV 1.xml"].last_error["code"] == kind
    assert elsewhere.read_bytes() == invoice("ODD/1")                  # the link's target untouched


async def test_an_entry_that_cannot_be_moved_stays_with_its_error_beside_it(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """rejected/ is on another file system (a rename cannot reach it): the link stays in the outbox with
    NAME.error.json beside it, told once (a second run finds the same error file and adds no second row)."""
    other_fs = Path("/dev/shm")
    if not _other_file_system(other_fs, tmp_path):
        pytest.skip("needs a second file system (/dev/shm) for rejected/")
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    folders = config.companies[0].folders
    folders.outbox.mkdir(parents=True, exist_ok=True)
    elsewhere = Path(tempfile.mkdtemp(dir=other_fs))
    try:
        folders.rejected.symlink_to(elsewhere, target_is_directory=True)
        target = tmp_path / "elsewhere.xml"
        target.write_bytes(invoice("STAY/1"))
        (folders.outbox / "FV 1.xml").symlink_to(target)
        await drain(config, limit=30)
        await drain(config, limit=30)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert (folders.outbox / "FV 1.xml").is_symlink()
    error = read_json(folders.outbox / "FV 1.error.json")
    assert error["code"] == "symbolic-link" and error["file"] == "FV 1.xml"
    assert [str(r.state) for r in await invoice_rows(config, "acme")] == ["rejected"]
    assert sim_records(sim) == []


# --- a file the daemon's user cannot read --------------------------------------------------------------

def _as_other_user() -> tuple[list[str], int | None]:
    """The command prefix that runs the daemon as a user who cannot read root's 0600 files, and that user's
    uid; as a non-root user, the daemon runs as itself and the file gets mode 000."""
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running the daemon as another user needs setpriv (util-linux)")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the daemon as")
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"], nobody.pw_uid


def _give(folder: Path, uid: int | None) -> None:
    if uid is None:
        return
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, -1, follow_symlinks=False)


async def run_once_as(prefix: list[str], config: Path, log: Path, limit: float = 60) -> int:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "ksefd", "--log-format", "json", "run", "--once", "-c", str(config),
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            env={**os.environ, "HOME": str(config.parent), "PYTHONDONTWRITEBYTECODE": "1"})
        try:
            return await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"the daemon did not finish; see {log}") from None


def _unreadable(path: Path, data: bytes, uid: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600 if uid is not None else 0o000)     # root's own 0600 file; or, as non-root, mode 000


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder another user may enter (pytest's own temporary folders are 0700 to root)."""
    base = Path(tempfile.mkdtemp(prefix="ksefd-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def test_a_file_the_daemon_cannot_read_is_rejected_and_the_rest_sent(
        sim_factory: Any, http: aiohttp.ClientSession, open_folder: Path) -> None:
    prefix, uid = _as_other_user()
    base = open_folder
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, base, "9999999999")
    config_path = write_config(base, sim.base_url, [{"name": "acme", "nip": "9999999999",
                                                     "token_file": str(token)}])
    config = load(config_path)
    folders = config.companies[0].folders
    drop(folders.outbox, "FV 1.xml", invoice("RO/1"))
    drop(folders.outbox, "FV 3.xml", invoice("RO/3"))
    _give(base, uid)
    # After the chown: these stay root's (or mode 000), so the daemon's user cannot read them.
    _unreadable(folders.outbox / "FV 2.xml", invoice("RO/2"), uid)
    claim_dir = folders.outbox / ".ksefd"
    claim_dir.mkdir(mode=0o700, exist_ok=True)
    _give(claim_dir, uid)
    _unreadable(claim_dir / "0123456789abcdef.FV 4.xml", invoice("RO/4"), uid)   # claimed just before a crash

    log = base / "daemon.log"
    assert await run_once_as(prefix, config_path, log) == 0, log.read_text(errors="replace")[-3000:]
    # A second start finds nothing to choke on either (no crash loop).
    assert await run_once_as(prefix, config_path, log) == 0, log.read_text(errors="replace")[-3000:]

    assert sorted(r["invoiceNumber"] for r in
                  (read_json(p) for p in folders.sent.glob("*.ksef.json"))) == ["RO/1", "RO/3"]
    for name in ("FV 2.xml", "FV 4.xml"):
        error = read_json(folders.rejected / name.replace(".xml", ".error.json"))
        assert error["code"] == "unreadable-file" and error["file"] == name
        assert "nie ma prawa odczytu" in error["message"] and "0640" in error["hint"]   # may not read (pl)
        assert (folders.rejected / name).stat().st_size > 0                # moved as it is, bytes untouched
    assert not list(claim_dir.iterdir())
    rows = {r.file_name: str(r.state) for r in await invoice_rows(config, "acme")}
    assert rows == {"FV 1.xml": "done", "FV 2.xml": "rejected", "FV 3.xml": "done", "FV 4.xml": "rejected"}
    assert '"outbox.refused"' in log.read_text(errors="replace")
