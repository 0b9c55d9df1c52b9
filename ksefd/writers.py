"""Is some process still writing a file? Asked of the operating system, so that a file that arrived
complete (renamed into the outbox, or closed by its writer) is taken at once instead of after the
`settle_seconds` stability wait (issue #16 point 3; DESIGN.md folder contract).

* Linux: a read lease (`fcntl(F_SETLEASE, F_RDLCK)`) cannot be granted while any process has the file
  open for writing (fcntl(2): EAGAIN). The lease is released at once, so a writer that opens the file
  meanwhile waits no longer than the call. Leases need the file's owner or CAP_LEASE and a file system that
  supports them; otherwise the answer is "cannot tell".
* Windows: opening the file without FILE_SHARE_WRITE fails with a sharing violation while another handle
  has it open for writing.
* Elsewhere, or when the check cannot be made: None, and the caller falls back to the stability wait
  (size and mtime unchanged for `settle_seconds`), which is always right, only slower.

A writer that closes a half-written file and opens it again later is not protected by this check; the
README asks ERPs to write a temporary name and rename it, or to keep the file open until it is complete.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

_F_SETLEASE = 1024            # Linux: F_LINUX_SPECIFIC_BASE + 0 (fcntl.h)
_F_RDLCK, _F_UNLCK = 0, 2


def open_for_writing(path: Path) -> bool | None:
    """True: another process has `path` open for writing; False: nobody has; None: cannot tell here."""
    if sys.platform.startswith("linux"):
        return _linux(path)
    if os.name == "nt":
        return _windows(path)
    return None


def _linux(path: Path) -> bool | None:
    import fcntl

    try:    # O_NOFOLLOW: a link in the outbox is never followed (it is reported, not read)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return True
            return None         # EACCES (not our file, no CAP_LEASE), EINVAL (no leases on this file system)
        fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
        return False
    finally:
        os.close(fd)


def _windows(path: Path) -> bool | None:     # pragma: no cover - exercised on Windows only
    import ctypes

    generic_read, file_share_read, open_existing, sharing_violation = 0x80000000, 0x1, 3, 32
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    kernel32.CreateFileW.restype = ctypes.c_void_p
    handle = kernel32.CreateFileW(str(path), generic_read, file_share_read, None, open_existing, 0, None)
    if handle in (None, ctypes.c_void_p(-1).value):
        return True if ctypes.get_last_error() == sharing_violation else None  # type: ignore[attr-defined,unused-ignore]
    kernel32.CloseHandle(ctypes.c_void_p(handle))
    return False
