"""Linux inotify(7) on the event loop: one file descriptor for every outbox, read only when the kernel has
something to say (issue #16 point 4). No thread and no timer: an idle daemon is not woken at all, and a
drop is seen as soon as it lands, whatever the number of companies.

watchfiles (the fallback on other systems, watch.py) runs a thread that wakes every `step` to look for
its stop event; with 100 companies that thread was most of the idle daemon's CPU.

`folder_is_local(path)` tells whether the kernel sees every change in a folder: on a network share
(NFS, SMB/CIFS, FUSE, ...) a change made on another machine raises no event, so intake's rescan stays the
way files are found there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from inotify_simple import INotify, flags

# A file appears (created or renamed in), is closed after writing or touched; the folder itself goes away. Not
# each write (IN_MODIFY): its writer's close follows (intake rescans a file still open every settle_seconds / 2),
# and most of those events were ksefd's own NAME.state.json writes, read and dropped by the thousand.
WATCH_MASK = (flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.ATTRIB | flags.DELETE_SELF
              | flags.MOVE_SELF | flags.ONLYDIR)
GONE = flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT
IN_Q_OVERFLOW = int(flags.Q_OVERFLOW)

# File systems whose changes all go through this kernel (so inotify sees them); anything else, network
# shares and FUSE above all, is not trusted and keeps the rescan.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "overlay",
                                "bcachefs", "jfs", "reiserfs", "nilfs2", "vfat", "exfat", "ntfs3"})


class Inotify:
    """An inotify instance (inotify_simple, a plain wrapper of the system calls): `add(folder)` -> watch
    descriptor, `fd` for `loop.add_reader`, `read()` -> the events waiting, without blocking."""

    def __init__(self) -> None:
        self._inotify = INotify(nonblocking=True)
        self.fd = self._inotify.fileno()

    def add(self, folder: Path) -> int:
        return int(self._inotify.add_watch(os.fsencode(folder), WATCH_MASK))

    def read(self) -> Iterator[tuple[int, int, str]]:
        """(watch descriptor, mask, file name) of every event waiting; nothing when none is."""
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        for event in events:
            yield event.wd, event.mask, event.name

    def close(self) -> None:
        self._inotify.close()


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount this process sees (/proc/self/mountinfo)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(" ")
        try:
            found.append((fields[4].replace("\\040", " "), fields[fields.index("-") + 1]))
        except (IndexError, ValueError):
            continue
    return found


def file_system_type(path: Path, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system `path` is on: that of the longest mount point above it."""
    target = str(path.resolve())
    best, found = -1, None
    for mount_point, fs_type in _mounts() if mounts is None else mounts:
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > best:
            best, found = len(mount_point), fs_type
    return found


def local_folders(folders: list[Path]) -> set[Path]:
    """Those of `folders` on a file system whose every change goes through this kernel."""
    mounts = _mounts()
    return {f for f in folders if file_system_type(f, mounts) in LOCAL_FILE_SYSTEMS}


def folder_is_local(path: Path) -> bool:
    return bool(local_folders([path]))
