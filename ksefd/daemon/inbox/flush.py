"""A chunk of inbox temps made durable at once (issue #16): one syncfs(2) instead of an fsync per file.

The inbox writes two files per invoice; on ext4 every fsync is a journal commit, and 100 000 of them were
most of the time and kernel CPU of a 50 000-invoice backfill. syncfs writes every dirty page and inode of
the file system and waits for them, in one call (its errors are reported since Linux 5.8); elsewhere, or
where it cannot be called, each file is fsynced as before. (The outbox's batch results do the same in
spool_group.sync_data on the perf-backlog branch; once both are merged this module can call that.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):       # a C library without syncfs (glibc < 2.14)
        return None
    return function


def sync_data(paths: Sequence[Path]) -> None:
    """The bytes of `paths` (written with spool.write_temp(sync=False)) durable, as an fsync of each would."""
    syncfs = _syncfs()
    if syncfs is None:
        for path in paths:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))   # Windows commits a writable handle
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    seen: set[int] = set()
    for folder in dict.fromkeys(path.parent for path in paths):
        fd = os.open(folder, os.O_RDONLY)
        try:
            device = os.fstat(fd).st_dev
            if device in seen:
                continue
            seen.add(device)
            if syncfs(fd) != 0:
                number = ctypes.get_errno()
                raise OSError(number, os.strerror(number), str(folder))
        finally:
            os.close(fd)
