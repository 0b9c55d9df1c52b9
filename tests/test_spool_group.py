"""Files placed as a group (spool_group): write_atomic's and write_new's rules, a flush per step, no temp left."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from ksefd import spool, spool_group


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".ksefd.tmp")]


def test_a_group_is_placed_by_the_rules_of_write_atomic_and_write_new(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_bytes(b"old")
    (tmp_path / "same.upo.xml").write_bytes(b"<UPO/>")
    staged = [spool_group.stage(tmp_path / "old.json", b"new", replace=True),
              spool_group.stage(tmp_path / "same.upo.xml", b"<UPO/>", replace=False),
              spool_group.stage(tmp_path / "fresh.upo.xml", b"<Fresh/>", replace=False)]
    assert len(temps(tmp_path)) == 3          # written, not yet in place
    assert spool_group.place(staged) == [True, False, True]
    assert (tmp_path / "old.json").read_bytes() == b"new"
    assert (tmp_path / "fresh.upo.xml").read_bytes() == b"<Fresh/>"
    assert temps(tmp_path) == []
    assert os.stat(tmp_path / "fresh.upo.xml").st_mode & 0o777 == spool.SHARED_FILE


def test_a_different_file_is_never_replaced_and_the_rest_of_the_group_is_placed(tmp_path: Path) -> None:
    (tmp_path / "taken.upo.xml").write_bytes(b"<Other/>")
    staged = [spool_group.stage(tmp_path / "taken.upo.xml", b"<Mine/>", replace=False),
              spool_group.stage(tmp_path / "next.upo.xml", b"<Next/>", replace=False)]
    with pytest.raises(spool.SpoolConflict):
        spool_group.place(staged)
    assert (tmp_path / "taken.upo.xml").read_bytes() == b"<Other/>"
    assert (tmp_path / "next.upo.xml").read_bytes() == b"<Next/>"
    assert temps(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs(2) is Linux's")
def test_a_group_costs_two_flushes_and_no_fsync_on_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    flushes: list[int] = []
    syncfs = spool_group._syncfs
    assert syncfs is not None
    monkeypatch.setattr(spool_group, "_syncfs", lambda fd: (flushes.append(fd), syncfs(fd))[1])
    spool_group.place([spool_group.stage(tmp_path / f"{n}.upo.xml", b"<UPO/>", replace=False) for n in range(50)])
    assert (fsyncs, len(flushes)) == ([], 2)       # the bytes, then the names
    assert len(list(tmp_path.glob("*.upo.xml"))) == 50


def test_without_syncfs_each_file_is_fsynced_then_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_group, "_syncfs", None)
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    assert spool_group.flush([tmp_path]) is False
    assert spool_group.place([spool_group.stage(tmp_path / f"{n}.json", b"{}", replace=True) for n in range(5)]) \
        == [True] * 5
    assert len(fsyncs) == 5 + 1 and temps(tmp_path) == []


def test_a_small_group_is_fsynced_file_by_file_without_a_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush waits for other programs' dirty pages too: an online invoice's few files are never worth one."""
    flushes: list[int] = []
    monkeypatch.setattr(spool_group, "_syncfs", lambda fd: flushes.append(fd) or 0)
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    count = spool_group.FLUSH_FROM - 1
    spool_group.place([spool_group.stage(tmp_path / f"{n}.upo.xml", b"<UPO/>", replace=False) for n in range(count)])
    assert (flushes, len(fsyncs)) == ([], count + 1)


def test_the_fsyncs_of_a_small_group_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On ext4 fsyncs that run at the same time share a journal commit: an online invoice's ksef.json and UPO
    cost about one commit, not one each (issue #16). Each fsync here waits until a second one runs beside it;
    one after the other, the first would wait in vain."""
    together = threading.Barrier(2, timeout=5)
    real = os.fsync

    def fsync(fd: int) -> None:
        together.wait()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(spool_group, "_syncfs", None)
    spool_group.sync_data([spool_group.stage(tmp_path / f"{n}.json", b"{}", replace=True).temp for n in range(2)])
