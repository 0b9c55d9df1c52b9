"""ksefd.heap: memory freed by worker threads goes back to the system (issue #16, peak RSS of a large backlog)."""

from __future__ import annotations

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
