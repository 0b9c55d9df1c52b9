"""Who may read what ksefd writes (issue #15 point 7): the state database (with its -wal and -shm) 0600, folders only
ksefd reads 0700, files the ERP reads (sent/, rejected/, inbox/, state files) 0640 for the service's group.
Real files on disk; the umask is set to the common 022, so the modes are the ones a service would get."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksefd import spool
from ksefd.store import Store

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_state_database_and_its_wal_are_0600_in_a_0750_folder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "state.sqlite3"
    async with await Store.open(path) as store:
        await store.kv.put("test", "probe", "1")
        assert mode(path) == 0o600
        assert mode(path.with_name("state.sqlite3-wal")) == 0o600
        assert mode(path.with_name("state.sqlite3-shm")) == 0o600
    assert mode(path.parent) == 0o750      # data_dir: the ERP's group must reach data_dir/<company>/outbox


async def test_a_dedicated_database_folder_is_0700(tmp_path: Path) -> None:
    path = tmp_path / "private" / "state.sqlite3"
    async with await Store.open(path, private_folder=True):
        pass
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


async def test_an_existing_folder_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    async with await Store.open(folder / "state.sqlite3", private_folder=True):
        pass
    assert mode(folder) == 0o755


async def test_a_database_an_earlier_version_left_0644_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    async with await Store.open(path) as store:
        await store.kv.put("test", "probe", "1")
    for name in (path, path.with_name("state.sqlite3-wal"), path.with_name("state.sqlite3-shm")):
        if name.exists():
            os.chmod(name, 0o644)
    async with await Store.open(path) as store:
        assert await store.kv.get("test", "probe") == "1"
        assert mode(path) == 0o600
        assert mode(path.with_name("state.sqlite3-wal")) == 0o600


def test_files_the_erp_reads_are_0640(tmp_path: Path) -> None:
    spool.write_new(tmp_path / "sent.xml", b"<a/>")
    spool.write_atomic(tmp_path / "FV.state.json", b"{}")
    spool.write_json(tmp_path / "FV.error.json", {"code": "xsd"})
    written = spool.write_unique(tmp_path, "sent.xml", b"<b/>")
    assert written.name == "sent-2.xml"
    for name in ("sent.xml", "FV.state.json", "FV.error.json", "sent-2.xml"):
        assert mode(tmp_path / name) == 0o640, name


def test_files_only_ksefd_reads_can_be_0600(tmp_path: Path) -> None:
    spool.write_atomic(tmp_path / "private.json", b"{}", mode=spool.PRIVATE_FILE)
    spool.write_new(tmp_path / "private.xml", b"<a/>", mode=spool.PRIVATE_FILE)
    assert mode(tmp_path / "private.json") == 0o600 and mode(tmp_path / "private.xml") == 0o600


def test_the_claim_folder_is_private_and_an_old_wide_one_is_narrowed(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    claims = spool.ensure_private_dir(outbox / ".ksefd")
    assert mode(claims) == 0o700 and mode(outbox) == 0o755        # the ERP's outbox keeps its mode
    os.chmod(claims, 0o755)
    (claims / "0123456789abcdef.FV.xml").write_bytes(b"<a/>")
    spool.ensure_private_dir(claims)
    assert mode(claims) == 0o700 and (claims / "0123456789abcdef.FV.xml").exists()


def test_a_file_where_the_claim_folder_should_be_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".ksefd").write_bytes(b"")
    with pytest.raises(FileExistsError):
        spool.ensure_private_dir(tmp_path / ".ksefd")
