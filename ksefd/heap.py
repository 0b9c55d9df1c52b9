"""Memory freed by a large piece of work given back to the operating system (issue #16: peak RSS).

glibc's malloc keeps what Python, lxml and SQLite free in its arenas, one per thread that allocated, and
returns it to the system only from the top of the main heap. After a chunk of a big drop has been parsed in
worker threads, or a page of a batch's results written, most of it stays mapped: a 10 000 backlog kept tens
of MB it no longer used. malloc_trim(0) hands every wholly free page of every arena back (madvise), in
about a millisecond. Elsewhere (musl, macOS, Windows) there is nothing to call and nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from typing import Any, cast


def _glibc(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """A glibc function, or None elsewhere (not Linux, or musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):      # not glibc
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


_malloc_trim = _glibc("malloc_trim", [ctypes.c_size_t])

M_MMAP_THRESHOLD = -3            # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 256 * 1024


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Serve every allocation of `size` bytes or more from its own mapping, returned to the system when freed.

    glibc raises this threshold by itself each time such a block is freed (up to 32 MB), after which the
    megabyte buffers of a long job (an export package read and decrypted piece by piece) come from the heaps,
    where they stay mapped and fragment them: a 50 000-invoice backfill peaked 4 MiB higher. A fixed
    threshold (mallopt, M_MMAP_THRESHOLD) turns that off. True if there was a way to (glibc)."""
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, size) == 1


def give_back() -> bool:
    """Return free heap pages to the system; True if there was a way to (glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
