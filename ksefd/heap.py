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


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):      # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _load()


def give_back() -> bool:
    """Return free heap pages to the system; True if there was a way to (glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
