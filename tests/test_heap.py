"""ksefd.heap: memory freed by worker threads goes back to the system (issue #16, peak RSS of a large backlog)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ksefd import heap


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._malloc_trim is None, reason="glibc's malloc_trim")
def test_what_a_worker_thread_freed_is_given_back() -> None:
    kept: list[bytearray] = []

    def work() -> None:          # as a chunk's parsing does: many allocations in a thread's own arena, most freed
        blocks = [bytearray(3000) for _ in range(30_000)]
        kept.extend(blocks[::16])
        blocks.clear()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = rss_kb()
    assert heap.give_back() is True
    assert before - rss_kb() > 20_000, "less than 20 MB of ~85 MB freed came back"
    assert len(kept) == 1875


# Run in a fresh interpreter: mallinfo2() counts the mappings of the whole process, and in the test process
# other threads (SQLite workers, servers of earlier tests) allocate and free at the same moment; the threshold
# (mallopt) is process-wide too, and stays out of the other tests' process.
_MAPPED_BUFFER = """
import ctypes, ctypes.util
from ksefd import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
assert heap.fix_mmap_threshold()
big = bytearray(8 << 20)
del big
before = mallinfo2().hblks
buffer = bytearray(1 << 20)
during = mallinfo2().hblks
del buffer
print(before, during, mallinfo2().hblks)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc's mallopt and mallinfo2")
def test_a_megabyte_buffer_gets_its_own_mapping_after_a_bigger_one_was_freed() -> None:
    """Without the fixed threshold, freeing an 8 MB block lifts glibc's threshold to 8 MB, and the 1 MB buffers
    that follow come from the heap, where they stay mapped after they are freed."""
    done = subprocess.run([sys.executable, "-c", _MAPPED_BUFFER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, during, after = map(int, done.stdout.split())
    assert during == before + 1 and after == before
