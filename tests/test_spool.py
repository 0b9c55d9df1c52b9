"""ksefd.spool on real folders: candidates, stability, atomic no-clobber writes, claims, JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ksefd import spool, writers
from ksefd.clock import ManualClock
from ksefd.spool import SpoolConflict


@pytest.mark.parametrize(("name", "expected"), [
    ("FV1.xml", True), ("FV 2026-01.XML", True), ("faktura.Xml", True),
    ("FV1.xml.tmp", False), ("FV1.tmp", False), (".FV1.xml", False), ("~$FV1.xml", False),
    ("FV1.json", False), ("FV1.xml.part", False), ("xml", False),
])
def test_candidates(name: str, expected: bool) -> None:
    assert spool.is_candidate(name) is expected


def test_scan_lists_candidates_oldest_first(tmp_path: Path) -> None:
    for i, name in enumerate(["b.xml", "a.xml", "c.XML", ".hidden.xml", "x.xml.tmp", "~$lock.xml", "note.txt"]):
        path = tmp_path / name
        path.write_bytes(b"<x/>")
        os.utime(path, ns=(1_700_000_000_000_000_000 - i * 1_000_000_000,) * 2)
    (tmp_path / "dir.xml").mkdir()
    (tmp_path / "link.xml").symlink_to(tmp_path / "a.xml")
    assert [p.name for p in spool.scan(tmp_path)] == ["c.XML", "a.xml", "b.xml"]


def test_split_name() -> None:
    assert spool.split_name("FV 1.XML") == ("FV 1", ".XML")
    assert spool.split_name("a.b.xml") == ("a.b", ".xml")
    assert spool.split_name("noext") == ("noext", "")


def test_stability_needs_two_equal_looks_apart_where_writers_cannot_be_seen(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    tracker = spool.StabilityTracker(clock, settle_seconds=2, writer_check=lambda _path: None)
    path = tmp_path / "FV.xml"
    path.write_bytes(b"<Faktura>")
    assert not tracker.is_stable(path)           # first look
    clock.advance(1)
    assert not tracker.is_stable(path)           # unchanged, but not long enough
    with path.open("ab") as f:                   # the ERP writes more
        f.write(b"</Faktura>")
    clock.advance(5)
    assert not tracker.is_stable(path)           # changed: the wait starts again
    clock.advance(2)
    assert tracker.is_stable(path)
    path.unlink()
    assert not tracker.is_stable(path)


def test_stability_notices_mtime_change_without_size_change(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    tracker = spool.StabilityTracker(clock, settle_seconds=2, writer_check=lambda _path: None)
    path = tmp_path / "FV.xml"
    assert not tracker.observe(path, 10, 1)
    clock.advance(3)
    assert not tracker.observe(path, 10, 2)
    clock.advance(3)
    assert tracker.observe(path, 10, 2)
    tracker.retain([])
    assert not tracker.observe(path, 10, 2)      # forgotten: starts over


def test_write_atomic_creates_and_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    spool.write_atomic(target, b"one")
    spool.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_new_never_clobbers(tmp_path: Path) -> None:
    target = tmp_path / "FV.xml"
    assert spool.write_new(target, b"first") is True
    assert spool.write_new(target, b"first") is False       # the same bytes again: a no-op
    with pytest.raises(SpoolConflict):
        spool.write_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FV.xml"]


def test_write_new_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")   # what FAT or some SMB shares answer

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "FV.xml"
    assert spool.write_new(target, b"first") is True
    assert spool.write_new(target, b"first") is True         # already there with the same bytes
    with pytest.raises(SpoolConflict):
        spool.write_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FV.xml"]


@pytest.mark.skipif(os.name == "nt", reason="Windows always copies")
def test_link_new_places_ksefds_own_copy_without_writing_it_again(tmp_path: Path) -> None:
    """A claimed invoice becomes sent/NAME.xml by a hard link (same inode, no second copy), with the ERP-facing
    mode; a repeat after a crash is a no-op, and other bytes under the name are never replaced."""
    work, sent = tmp_path / "work", tmp_path / "sent"
    work.mkdir()
    sent.mkdir()
    source = work / "abc.FV.xml"
    source.write_bytes(b"<Faktura/>")
    source.chmod(0o600)
    target = sent / "FV.xml"
    assert spool.link_new(target, b"<Faktura/>", source) is True
    assert os.path.samefile(source, target) and target.read_bytes() == b"<Faktura/>"
    assert target.stat().st_mode & 0o777 == spool.SHARED_FILE
    assert spool.link_new(target, b"<Faktura/>", source) is False
    other = work / "def.FV.xml"
    other.write_bytes(b"<Inna/>")
    with pytest.raises(SpoolConflict):
        spool.link_new(target, b"<Inna/>", other)
    source.unlink()                                  # the working copy is discarded: sent/ keeps the bytes
    assert target.read_bytes() == b"<Faktura/>" and sorted(p.name for p in sent.iterdir()) == ["FV.xml"]


def test_link_new_copies_where_a_link_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "abc.FV.xml"
    source.write_bytes(b"<Faktura/>")
    assert spool.link_new(tmp_path / "gone.xml", b"<Faktura/>", tmp_path / "missing.xml") is True
    assert (tmp_path / "gone.xml").read_bytes() == b"<Faktura/>"
    real_link = os.link

    def cross_device(src: object, dst: object) -> None:
        if str(src) == str(source):
            raise OSError(18, "Invalid cross-device link")      # sent/ on another file system
        real_link(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device)
    target = tmp_path / "FV.xml"
    assert spool.link_new(target, b"<Faktura/>", source) is True
    assert target.read_bytes() == b"<Faktura/>" and not os.path.samefile(source, target)
    assert spool.write_unique(tmp_path, "FV.xml", b"<Faktura/>", source=source) == target   # a repeat


def test_unique_stem_and_write_unique(tmp_path: Path) -> None:
    first = spool.write_unique(tmp_path, "FV.xml", b"one")
    assert first.name == "FV.xml"
    (tmp_path / "FV.ksef.json").write_bytes(b"{}")
    second = spool.write_unique(tmp_path, "FV.xml", b"two")
    assert second.name == "FV-2.xml"
    assert spool.write_unique(tmp_path, "FV.xml", b"two").name == "FV-2.xml"   # a repeat is recognised
    assert spool.write_unique(tmp_path, "FV.xml", b"one").name == "FV.xml"
    # a companion left by an earlier invoice (its XML moved away by the ERP) also blocks a stem
    (tmp_path / "FV-3.error.json").write_bytes(b"{}")
    assert spool.unique_stem(tmp_path, "FV", ".xml", b"three") == "FV-4"
    assert (tmp_path / "FV.xml").read_bytes() == b"one"


def test_claim_by_rename(tmp_path: Path) -> None:
    outbox, work = tmp_path / "outbox", tmp_path / "outbox" / ".ksefd"
    work.mkdir(parents=True)
    dropped = outbox / "FV.xml"
    dropped.write_bytes(b"<x/>")
    assert spool.claim(dropped, work / "1-FV.xml") is True
    assert not dropped.exists() and (work / "1-FV.xml").read_bytes() == b"<x/>"
    assert spool.claim(dropped, work / "2-FV.xml") is False       # gone: nothing to claim
    dropped.write_bytes(b"<y/>")
    with pytest.raises(SpoolConflict):
        spool.claim(dropped, work / "1-FV.xml")
    assert dropped.exists() and (work / "1-FV.xml").read_bytes() == b"<x/>"


def test_stale_temps_are_ignored_and_removed(tmp_path: Path) -> None:
    leftover = spool.write_temp(tmp_path, "FV.xml", b"half")   # as a crash before the rename leaves it
    (tmp_path / ".erp-own.tmp").write_bytes(b"")
    assert spool.scan(tmp_path) == []
    assert spool.remove_stale_temps(tmp_path) == 1
    assert not leftover.exists() and (tmp_path / ".erp-own.tmp").exists()


def test_json_is_stable_utf8_and_sorted(tmp_path: Path) -> None:
    value = {"zeta": 1, "alpha": {"ż": "Łódź", "b": [Decimal("12.50")]},
             "when": dt.datetime(2026, 2, 15, 10, 0, tzinfo=dt.UTC), "day": dt.date(2026, 2, 15),
             "path": Path("/srv/x")}
    data = spool.json_bytes(value)
    assert data == spool.json_bytes(dict(reversed(list(value.items()))))
    text = data.decode("utf-8")
    assert "Łódź" in text and text.endswith("\n") and text.index('"alpha"') < text.index('"zeta"')
    assert json.loads(text)["alpha"]["b"] == ["12.50"]
    assert json.loads(text)["when"] == "2026-02-15T10:00:00Z"
    assert '\n  "alpha": {\n    "b": [' in text
    path = spool.write_json(tmp_path / "FV.ksef.json", value)
    assert path.read_bytes() == data
    with pytest.raises(TypeError):
        spool.json_bytes({"x": object()})


HOLD_OPEN = """
import sys, time
with open(sys.argv[1], "ab") as f:
    f.write(b"<Faktura>")
    f.flush()
    print("open", flush=True)
    sys.stdin.readline()            # the test says when the writer is done
    f.write(b"</Faktura>")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read leases are Linux's (writers.py)")
def test_a_file_is_taken_at_once_when_no_process_writes_it_and_never_while_one_does(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    tracker = spool.StabilityTracker(clock, settle_seconds=2)
    renamed = tmp_path / "RENAMED.xml"
    (tmp_path / "RENAMED.xml.tmp").write_bytes(b"<Faktura/>")
    (tmp_path / "RENAMED.xml.tmp").rename(renamed)
    assert writers.open_for_writing(renamed) is False
    assert tracker.is_stable(renamed)                 # no settle wait: nobody holds it open for writing

    slow = tmp_path / "SLOW.xml"
    with subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(slow)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        assert writers.open_for_writing(slow) is True
        assert not tracker.is_stable(slow)
        clock.advance(10)                             # unchanged for longer than settle_seconds, still open
        assert not tracker.is_stable(slow)
        assert writer.stdin is not None
        writer.stdin.write("done\n")
        writer.stdin.flush()
        assert writer.wait(10) == 0
    assert slow.read_bytes() == b"<Faktura></Faktura>"
    assert tracker.is_stable(slow)                    # closed by its writer: taken at once


def test_writers_cannot_tell_for_a_missing_file_or_a_link(tmp_path: Path) -> None:
    assert writers.open_for_writing(tmp_path / "missing.xml") is None
    (tmp_path / "real.xml").write_bytes(b"x")
    (tmp_path / "link.xml").symlink_to(tmp_path / "real.xml")
    assert writers.open_for_writing(tmp_path / "link.xml") is None      # links are never followed


def test_read_bytes_reads_a_whole_file_of_any_size(tmp_path: Path) -> None:
    """spool.read_bytes (os-level, for a backlog's many reads): empty, one chunk, several chunks, a missing file."""
    for size in (0, 10, (1 << 20) + 3):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        (tmp_path / "f").write_bytes(data)
        assert spool.read_bytes(tmp_path / "f") == data and spool.read_bytes(str(tmp_path / "f")) == data
    with pytest.raises(FileNotFoundError):
        spool.read_bytes(tmp_path / "missing")
