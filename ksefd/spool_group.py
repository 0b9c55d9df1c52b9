"""Result files written as a group: a few flushes of the file system instead of an fsync per file (issue #16).

A batch's results are hundreds of files at once (sent/NAME.xml, NAME.ksef.json, NAME.upo.xml). Written one by
one (temp, fsync, rename), each costs its own fsync, and on ext4 every fsync is a journal commit: ~3 per
invoice made most of the time and kernel CPU of a large backlog. The guarantees stay those of spool.py, only
the order changes to one flush per step of the group:

    every temp written (no fsync) -> flush: all their bytes durable -> each renamed or linked into place
    -> flush: the names durable -> (the caller) one SQLite commit that records them

so a name never becomes durable before its bytes (a power cut can never leave a torn file under a final name)
and nothing is recorded before its files are durable. A kill -9 loses nothing the kernel already has: a crash
anywhere leaves at most temps (removed at the next start, spool.remove_stale_temps) and files placed but not
yet recorded, which the next round writes again with the same bytes (a no-op).

The flush is Linux's syncfs(2): every dirty page and inode of that file system written and waited for, in one
call (its errors are reported since Linux 5.8). It also waits for other programs' dirty pages on that file
system, so it is used for groups of FLUSH_FROM files or more only. Smaller groups, other platforms, or where
it cannot be called: each file is fsynced and the directory after, as before, but the files of a group at
once, from a few threads: on ext4 fsyncs that overlap share one journal commit (3 files: ~2 ms instead of
~12 ms one after the other, measured on the 2-core machine, issue #16), and each still waits for nothing but
its own file.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import spool

FLUSH_FROM = 16         # files in a group from which one flush replaces an fsync each (worth_flushing)
SYNCERS = 8             # threads fsyncing a group's files at once (sync_data), only while it runs


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):       # a C library without syncfs (glibc < 2.14)
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()


def flush(directories: Iterable[Path]) -> bool:
    """One syncfs(2) for each file system holding one of `directories`. False (and nothing done) where the
    platform has no syncfs: the caller then fsyncs file by file."""
    if _syncfs is None:
        return False
    seen: set[int] = set()
    for directory in dict.fromkeys(directories):
        fd = os.open(directory, os.O_RDONLY)
        try:
            device = os.fstat(fd).st_dev
            if device in seen:
                continue
            seen.add(device)
            if _syncfs(fd) != 0:
                number = ctypes.get_errno()
                raise OSError(number, os.strerror(number), str(directory))
        finally:
            os.close(fd)
    return True


def worth_flushing(count: int) -> bool:
    """A flush waits for every dirty page of the file system, other programs' too, so it pays only for a group
    of files; a few (an online invoice's results) are fsynced one by one, each a fraction of a millisecond."""
    return count >= FLUSH_FROM


def sync_data(paths: Sequence[Path]) -> None:
    """The bytes of `paths` durable: one flush of their file systems for a group, else an fsync of each."""
    if not paths or (worth_flushing(len(paths)) and flush(p.parent for p in paths)):
        return
    if len(paths) == 1:
        _fsync(paths[0])
        return
    with ThreadPoolExecutor(min(SYNCERS, len(paths)), thread_name_prefix="ksefd-fsync") as pool:
        for _ in pool.map(_fsync, paths):        # the first error is raised, once every fsync has ended
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))    # Windows commits a writable handle only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_names(directory: Path, count: int) -> None:
    """The renames and links of `count` files made in `directory` durable (and, with a flush, every other change
    on its file system too: the modes of files linked in, say)."""
    if not (worth_flushing(count) and flush([directory])):
        spool.fsync_directory(directory)


@dataclass(frozen=True)
class Staged:
    """A file's bytes in a temp beside it, not yet durable nor in place (`stage`, then `place`)."""

    temp: Path
    path: Path
    data: bytes
    replace: bool       # True: replaces what is there (write_atomic); False: never clobbers (write_new)


def stage(path: Path, data: bytes, *, replace: bool, mode: int = spool.SHARED_FILE) -> Staged:
    return Staged(spool.write_temp(path.parent, path.name, data, mode, sync=False), path, data, replace)


def place(staged: Sequence[Staged]) -> list[bool]:
    """Make the group's temps durable (one flush), put each in place by the rules of write_atomic or write_new
    (True: placed; False: the same bytes were there already), then make the names durable (one flush or one
    fsync per directory). A SpoolConflict of one file is raised once the others are placed; no temp is left."""
    if not staged:
        return []
    results: list[bool] = []
    conflict: spool.SpoolConflict | None = None
    try:
        sync_data([s.temp for s in staged])
        for item in staged:
            if item.replace:
                os.replace(item.temp, item.path)
                results.append(True)
                continue
            try:
                results.append(spool.place_new(item.temp, item.path, item.data))   # its temp is gone after
            except spool.SpoolConflict as exc:
                conflict = conflict or exc
                results.append(False)
    except BaseException:   # the temps not yet placed (placed ones are gone: no unlink each, issue #16)
        for item in staged:
            item.temp.unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(s.path.parent for s in staged):
        sync_names(directory, len(staged))
    if conflict is not None:
        raise conflict
    return results
