"""Files the ERP and ksefd exchange (DESIGN.md, folder contract): which dropped files count, when a
file is finished, claiming by rename, and writes that are atomic and never clobber.

Every write goes to a temporary file in the destination directory (a dot-file ending `.ksefd.tmp`,
so no scanner ever picks it up), is flushed and fsynced, then renamed into place, and the directory
is fsynced, so after a crash a reader sees either the old state or the whole new file.

Permissions (issue #15 point 7): files the ERP reads (sent/, rejected/, inbox/, outbox/NAME.state.json) are
created 0640: the ERP runs as the service user or as a member of its group, and nobody else reads invoice
data. Files and folders only ksefd reads are 0600 / 0700 (`PRIVATE_FILE`, `ensure_private_dir`, e.g. the
claim folder outbox/.ksefd). The process umask can only narrow these.

Clobbering: ksefd never replaces a different file that an ERP may already have read. `write_new`
refuses (`SpoolConflict`) and `unique_stem` picks `NAME-2`, `NAME-3`, ... for the next invoice that
reuses a name, so `sent/NAME.xml` and its companions always describe one invoice. Writing the same
bytes again is a no-op, which makes every result write safe to repeat after a crash. Files ksefd
owns and rewrites (state files, the `.ksef.json` of a stem it chose) use `write_atomic`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from .writers import open_for_writing

SHARED_FILE = 0o640    # what the ERP reads: owner and group (the module docstring)
PRIVATE_FILE = 0o600   # what only ksefd reads
PRIVATE_DIR = 0o700
_TEMP_SUFFIX = ".ksefd.tmp"
_TEMP_NAME = re.compile(r"^\..*\.[0-9a-f]{16}\.ksefd\.tmp$")
# File names are at most 255 bytes on Linux file systems (NAME_MAX) and 255 UTF-16 units on NTFS. An ERP may
# drop a name near that limit, and ksefd adds to it (`NAME-2`, `.error.json`, a temporary suffix), so every
# name ksefd derives from a dropped one keeps its stem within STEM_MAX_BYTES (issue #15 point 1).
STEM_MAX_BYTES = 200
_TEMP_NAME_MAX_BYTES = 160


class SpoolConflict(FileExistsError):
    """The destination exists with different content; ksefd never overwrites it."""


# --- what counts as a dropped invoice ---------------------------------------------------------------

def is_candidate(name: str) -> bool:
    """Only `*.xml` (any case); never temporary names: `*.tmp`, dot-files, Office lock files `~$*`."""
    return (name.lower().endswith(".xml") and not name.startswith((".", "~$"))
            and not name.lower().endswith(".tmp"))


def scan(directory: Path, odd: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Candidate regular files, oldest modification first. Symlinks (never followed: the invoice must be the
    file ksefd claims, not a file elsewhere it may change), FIFOs, folders, devices and sockets with a
    candidate's name are not candidates; they are added to `odd` as (path, kind) when it is given, so that
    intake can tell somebody (issue #15 point 3)."""
    found: list[tuple[int, str, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue   # removed between listing and stat
            if stat.S_ISREG(info.st_mode):
                found.append((info.st_mtime_ns, entry.name, Path(entry.path)))
            elif odd is not None:
                odd.append((Path(entry.path), entry_kind(info.st_mode)))
    return [path for _, _, path in sorted(found)]


def entry_kind(mode: int) -> str:
    """What a folder entry is, in the words of the error codes (`symbolic-link`, `fifo`, ...)."""
    for test, kind in ((stat.S_ISLNK, "symbolic-link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device-file"), (stat.S_ISBLK, "device-file"),
                       (stat.S_ISREG, "file")):
        if test(mode):
            return kind
    return "special-file"


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 form fits `max_bytes` (never half a character)."""
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def bounded_stem(stem: str, max_bytes: int = STEM_MAX_BYTES) -> str:
    """`stem`, or when its UTF-8 form is longer than `max_bytes`, its beginning and `~` and 8 hex digits of
    its hash, so that two long names that differ only at the end stay apart (issue #15 point 1)."""
    if len(stem.encode("utf-8", "surrogateescape")) <= max_bytes:
        return stem
    digest = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cut_utf8(stem, max_bytes - 9)}~{digest}"


def bounded_name(name: str, max_bytes: int = STEM_MAX_BYTES) -> str:
    """`name` with its stem bounded as in `bounded_stem` (the suffix, e.g. `.xml`, kept)."""
    stem, suffix = split_name(name)
    return bounded_stem(stem, max_bytes) + suffix


def split_name(name: str) -> tuple[str, str]:
    """`FV 1.XML` -> (`FV 1`, `.XML`): the stem names the companions (`FV 1.ksef.json`)."""
    stem, dot, suffix = name.rpartition(".")
    return (stem, dot + suffix) if dot and stem else (name, "")


class _Clock(Protocol):
    def now(self) -> dt.datetime: ...


@dataclass
class _Look:
    size: int
    mtime_ns: int
    since: dt.datetime


class StabilityTracker:
    """When may a file in the outbox be read? At once when the operating system says that no process has it
    open for writing (writers.py: renamed in, or closed by its writer); otherwise, or where that cannot be
    told, when its size and mtime are unchanged across two looks `settle_seconds` apart, so that an ERP
    writing in place is never read half-written."""

    def __init__(self, clock: _Clock, settle_seconds: float = 2.0,
                 writer_check: Callable[[Path], bool | None] = open_for_writing) -> None:
        self._clock = clock
        self._settle = dt.timedelta(seconds=settle_seconds)
        self._looks: dict[Path, _Look] = {}
        self._writer_check = writer_check

    def is_stable(self, path: Path) -> bool:
        try:
            info = path.stat()
        except FileNotFoundError:
            self.forget(path)
            return False
        writing = self._writer_check(path)
        if writing is False:
            self.forget(path)
            return True
        if writing is True:        # still open for writing: whatever its size says, the wait starts again
            self._looks[path] = _Look(info.st_size, info.st_mtime_ns, self._clock.now())
            return False
        return self.observe(path, info.st_size, info.st_mtime_ns)

    def observe(self, path: Path, size: int, mtime_ns: int) -> bool:
        now = self._clock.now()
        look = self._looks.get(path)
        if look is None or (look.size, look.mtime_ns) != (size, mtime_ns):
            self._looks[path] = _Look(size, mtime_ns, now)
            return False
        return now - look.since >= self._settle

    def forget(self, path: Path) -> None:
        self._looks.pop(path, None)

    def retain(self, paths: Iterable[Path]) -> None:
        """Drop what is remembered about files no longer present (call after each scan)."""
        keep = set(paths)
        for path in [p for p in self._looks if p not in keep]:
            del self._looks[path]


# --- atomic writes ----------------------------------------------------------------------------------

def fsync_directory(directory: Path) -> None:
    """Make a rename durable. Windows cannot open a directory; NTFS journals renames itself."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(directory: Path, name: str, data: bytes, mode: int = SHARED_FILE, *, sync: bool = True) -> Path:
    """A fresh dot-file temp in `directory` holding `data`, fsynced (O_EXCL: never someone else's file),
    created with `mode` (the final file keeps it: it is renamed or linked into place). `sync=False`: not
    fsynced; the caller makes a group of temps durable at once (spool_group.sync_data) before placing them.

    `remove_stale_temps` knows its name, so one left behind by a crash is cleaned up at the next start.
    """
    temp = directory / f".{cut_utf8(name, _TEMP_NAME_MAX_BYTES)}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True, mode: int = SHARED_FILE) -> Path:
    """Create or replace `path` atomically (for files ksefd owns). `sync_dir=False` leaves the directory
    fsync to the caller, who then calls `fsync_directory` once for a group of files."""
    temp = write_temp(path.parent, path.name, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_directory(path.parent)
    return path


def read_bytes(path: str | Path) -> bytes:
    """A whole file's bytes by os.open/os.read: Path.read_bytes's buffered file adds an ioctl, an lseek and an io
    object per file, for each of a backlog's invoices several times (issue #16)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        return read_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_fd(fd: int, size: int) -> bytes:
    """The rest of an open file whose size is `size`: asked for size + 1 bytes, then read on to the end (a file
    that grew meanwhile is read whole). Not in 1 MiB reads: the daemon serves every block of 256 KiB or more from
    a mapping of its own (heap.fix_mmap_threshold), so each such buffer for a file of a few kB was an mmap, an
    mremap to shrink it and a munmap, with its page faults: about three per invoice read (issue #16)."""
    chunks = []
    want = size + 1
    while chunk := os.read(fd, want):
        chunks.append(chunk)
        want = READ_ON
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


READ_ON = 1 << 16        # read_fd's reads past the size the file had when it was opened


def same_content(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


def write_new(path: Path, data: bytes, *, sync_dir: bool = True, mode: int = SHARED_FILE) -> bool:
    """Create `path` atomically without ever replacing another file. True if written, False if the
    same bytes were already there; `SpoolConflict` if different bytes are. `sync_dir` as in write_atomic."""
    temp = write_temp(path.parent, path.name, data, mode)
    if not place_new(temp, path, data):
        return False
    if sync_dir:
        fsync_directory(path.parent)
    return True


def place_new(temp: Path, path: Path, data: bytes) -> bool:
    """The durable temp holding `data` becomes `path` unless `path` exists (write_new's rules: True if placed,
    False if the same bytes were there, SpoolConflict for others); the temp is gone afterwards either way."""
    try:
        try:
            os.link(temp, path)   # atomic create-if-absent
        except FileExistsError:
            if same_content(path, data):
                return False
            raise SpoolConflict(f"{path} exists with different content; ksefd never overwrites it") from None
        except OSError:
            _place_without_link(temp, path, data)   # file systems without hard links (FAT, some shares)
    finally:
        temp.unlink(missing_ok=True)
    return True


def _place_without_link(temp: Path, path: Path, data: bytes) -> None:
    if path.exists():
        if same_content(path, data):
            return
        raise SpoolConflict(f"{path} exists with different content; ksefd never overwrites it")
    if os.name == "nt":
        os.rename(temp, path)   # refuses an existing target on Windows
    else:
        os.replace(temp, path)  # a narrow race with another writer remains; only ksefd writes here


def unique_stem(directory: Path, stem: str, suffix: str, data: bytes,
                companions: Iterable[str] = (".ksef.json", ".upo.xml", ".error.json")) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... : the first whose `stem+suffix` is absent (or holds these
    very bytes: a repeat after a crash) and that has no companion file of an earlier invoice."""
    companions = tuple(companions)
    folder = os.fspath(directory)       # plain strings: a Path per look was a large share of a batch's CPU
    number = 1
    while True:
        candidate = stem if number == 1 else f"{stem}-{number}"
        primary = os.path.join(folder, candidate + suffix)
        if os.path.exists(primary):
            if same_content(Path(primary), data):
                return candidate
        elif not any(os.path.exists(os.path.join(folder, candidate + c)) for c in companions):
            return candidate
        number += 1


def write_unique(directory: Path, name: str, data: bytes,
                 companions: Iterable[str] = (".ksef.json", ".upo.xml", ".error.json"), *,
                 sync_dir: bool = True, source: Path | None = None, source_synced: bool = False) -> Path:
    """Write `data` as `directory/name`, or as `NAME-2.xml`... if that name holds another invoice. A stem
    longer than STEM_MAX_BYTES is shortened (`bounded_stem`). `source`: a file of ksefd's own holding exactly
    `data`, linked into place if it can be (`link_new`; `source_synced` as there)."""
    stem, suffix = split_name(name)
    stem = bounded_stem(stem)
    companions = tuple(companions)
    while True:
        path = directory / (unique_stem(directory, stem, suffix, data, companions) + suffix)
        with contextlib.suppress(SpoolConflict):   # someone took the name meanwhile: pick again
            if source is not None:
                link_new(path, data, source, sync_dir=sync_dir, source_synced=source_synced)
            else:
                write_new(path, data, sync_dir=sync_dir)
            return path


def link_new(path: Path, data: bytes, source: Path, *, sync_dir: bool = True, mode: int = SHARED_FILE,
             source_synced: bool = False) -> bool:
    """`write_new`, but by a hard link of `source` (a private, never-modified file ksefd owns that holds exactly
    `data`, e.g. a claimed invoice): the bytes are made durable with one fsync of `source` instead of being
    copied into a temp file, fsynced, linked and the temp removed. Where a link cannot be made (another
    owner, another file system, no hard links, Windows), it falls back to `write_new`. The same guarantees:
    never replaces another file; the same bytes already there -> False. `source_synced`: the caller has made
    the source's bytes durable already (a group's sources at once, spool_group.sync_data), so no fsync here."""
    if os.name == "nt":
        return write_new(path, data, sync_dir=sync_dir, mode=mode)
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError:
        return write_new(path, data, sync_dir=sync_dir, mode=mode)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_size != len(data):
            return write_new(path, data, sync_dir=sync_dir, mode=mode)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)      # the ERP-facing mode; the source sits in a 0700 folder anyway
        if not source_synced:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(source, path)   # atomic create-if-absent, as in write_new
    except FileExistsError:
        if same_content(path, data):
            return False
        raise SpoolConflict(f"{path} exists with different content; ksefd never overwrites it") from None
    except OSError:
        return write_new(path, data, sync_dir=sync_dir, mode=mode)
    if sync_dir:
        fsync_directory(path.parent)
    return True


def remove_stale_temps(directory: Path) -> int:
    """Delete temporary files a crash left behind (only ksefd's own names). Returns how many."""
    removed = 0
    for entry in directory.iterdir():
        if _TEMP_NAME.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


# --- private folders ----------------------------------------------------------------------------

def ensure_private_dir(path: Path) -> Path:
    """`path` as a folder only ksefd's user can open (0700), e.g. the claim folder outbox/.ksefd: created so, or
    narrowed if an earlier version created it wider. Its parents are left as they are (they are the ERP's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        if not path.is_dir():
            raise
    if os.name != "nt" and path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR)
    return path


# --- claim by rename ------------------------------------------------------------------------------

def claim(source: Path, destination: Path, *, sync_dir: bool = True) -> bool:
    """Move a dropped file to ksefd's working place (same file system) in one rename. False when the
    file is gone (the ERP took it back) or still locked by its writer (Windows); never overwrites.
    `sync_dir=False`: the caller fsyncs both directories once for a group of claims, before relying on them."""
    if destination.exists():
        raise SpoolConflict(f"{destination} exists; claim into a fresh name")
    try:
        os.rename(source, destination)
    except (FileNotFoundError, PermissionError):
        return False
    if not sync_dir:
        return True
    fsync_directory(destination.parent)
    if source.parent != destination.parent:
        fsync_directory(source.parent)
    return True


def free_stem(directory: Path, stem: str, suffix: str,
              companions: Iterable[str] = (".ksef.json", ".upo.xml", ".error.json")) -> str:
    """`stem` (bounded), or `stem-2`, ...: the first for which nothing at all exists yet (for a move by rename,
    where the bytes cannot be compared: a file ksefd cannot read, a link, a FIFO)."""
    stem = bounded_stem(stem)
    companions = tuple(companions)
    number = 1
    while True:
        candidate = stem if number == 1 else f"{stem}-{number}"
        if not any(os.path.lexists(directory / (candidate + s)) for s in (suffix, *companions)):
            return candidate
        number += 1


# --- JSON -----------------------------------------------------------------------------------------

def _enc_hook(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_bytes(obj: Any) -> bytes:
    """UTF-8 (not \\u-escaped), 2-space indent, keys sorted, final newline: identical input gives
    identical bytes, so rewriting a result after a crash changes nothing."""
    compact = msgspec.json.encode(obj, enc_hook=_enc_hook, order="sorted")
    return msgspec.json.format(compact, indent=2) + b"\n"


def write_json(path: Path, obj: Any, *, sync_dir: bool = True, mode: int = SHARED_FILE) -> Path:
    return write_atomic(path, json_bytes(obj), sync_dir=sync_dir, mode=mode)
