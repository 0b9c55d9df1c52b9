"""Run `python -m ksefd ...` under tracemalloc; write the allocations alive at the peak of Python's traced memory.

Used by peer_backlog.py (KSEFD_BENCH_TRACEMALLOC=FILE): `python tracemalloc_peak.py FILE -m ksefd ARGS...`.
A thread samples the traced total every 0.2 s and snapshots whenever it is 2 % above the last snapshot; at exit
FILE gets that snapshot's top lines by file:line and by traceback (tracemalloc's own overhead inflates RSS, so
read the MB figures as shares, not as the daemon's real peak)."""

from __future__ import annotations

import atexit
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def main() -> None:
    out, _, module = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    tracemalloc.start(8)
    best: list[tracemalloc.Snapshot | None] = [None]
    peak = [0]
    rss = [""]

    def watch() -> None:
        while True:
            time.sleep(0.2)
            current, _ = tracemalloc.get_traced_memory()
            if current > peak[0] * 1.02:
                peak[0] = current
                best[0] = tracemalloc.take_snapshot()
                rss[0] = Path("/proc/self/smaps_rollup").read_text()

    def dump() -> None:
        snap = best[0]
        if snap is None:
            return
        snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines = [f"peak traced {peak[0] / 2**20:.1f} MB\n{rss[0]}\n--- by line\n"]
        lines += [f"{s.size / 2**20:7.2f} MB {s.count:8d}  {s.traceback[0]}\n" for s in snap.statistics("lineno")[:40]]
        lines.append("--- by traceback\n")
        for s in snap.statistics("traceback")[:25]:
            lines.append(f"{s.size / 2**20:7.2f} MB {s.count:8d}\n")
            lines += [f"      {frame}\n" for frame in s.traceback.format()[-16:]]
        Path(out).write_text("".join(lines))

    atexit.register(dump)
    threading.Thread(target=watch, daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
