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

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from pathlib import Path

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000

# A file appears (created or renamed in), is written, closed or touched; the folder itself goes away.
WATCH_MASK = (IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
              | IN_ONLYDIR)
GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_HEADER = struct.Struct("iIII")     # wd, mask, cookie, len (struct inotify_event)

# File systems whose changes all go through this kernel (so inotify sees them); anything else, network
# shares and FUSE above all, is not trusted and keeps the rescan.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "overlay",
                                "bcachefs", "jfs", "reiserfs", "nilfs2", "vfat", "exfat", "ntfs3"})


class Inotify:
    """An inotify instance: `add(folder)` -> watch descriptor, `fd` for `loop.add_reader`, `read()` -> events."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(name, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"inotify_init1: {os.strerror(errno)}")

    def add(self, folder: Path) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(folder), WATCH_MASK))
        if wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"inotify_add_watch {folder}: {os.strerror(errno)}")
        return wd

    def read(self) -> Iterator[tuple[int, int, str]]:
        """(watch descriptor, mask, file name) of every event waiting; nothing when none is."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            name = os.fsdecode(data[offset:offset + length].rstrip(b"\0"))
            offset += length
            yield wd, mask, name

    def close(self) -> None:
        os.close(self.fd)


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
