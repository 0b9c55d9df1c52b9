"""What wakes an idle daemon (issue #16 point 4): every timer the event loop runs, by where it was set.

The simulator runs in its own process (`--limits production`); the daemon runs in this process (`serve`, as
`ksefd run` does, default config, send and receive on for C companies) so that its event loop can be watched:
after every company connected and --settle seconds passed, for --seconds seconds every `loop.call_at` (what
`asyncio.sleep`, `wait_for`'s timeouts and aiohttp's timers use) is recorded with the frames of ksefd, aiohttp
and asyncio that set it, and every return of the loop's `select` (a wake-up) with what ran after it: the timers
by their source, other callbacks (a socket readable, a thread's result) by name.

    .venv/bin/python benchmarks/idle_timers.py [--companies 100] [--seconds 60] [--settle 15]

Prints the wake-ups per second (a `select` that waited and returned), each by what ran first after it (a timer by
where it was set; a result from another thread, e.g. aiosqlite's, by the task it wakes), then the timers set.

Measured 2026-12-07 on main c4921ab (before issue #16's third idle round), 100 companies, load 2.6-2.8:
    60 s from 10 s after the last login: 27 wake-ups (0.45/s): the heartbeat 24 (its timer and three round
        trips to the SQLite thread every 10 s: BEGIN IMMEDIATE, INSERT, COMMIT), aiohttp's connector clean-up 1
        (it runs every keepalive_timeout only while the shared connector still holds keep-alive connections,
        so once after the last inbox cycle), two one-off timers.
    300 s: 6 707 wake-ups, 0.58 s of CPU: at 300 s after the logins every company's dispatcher (3 135), tracker
        (2 036), offline desk (938) and batch resume (289) looked at the state database: their safety net for a
        missed wake-up (IDLE_LOOK_SECONDS, 300 s then) cost ~65 SQLite round trips per company; the offline desk
        and intake did the same every 15 min (the rescan of an inotify-watched outbox).
Branch perf-idle3 (load 0.7): 60 s, 15 wake-ups (0.25/s): the heartbeat 12 (its timer and one round trip), the
clean-up 1, a one-off timer 1, this script's own 1; the safety nets once an hour, the heartbeat one statement (the
daemon's CPU with and without: many_companies.py's docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _common import start_simulator
from many_companies import make_tokens
from peer_backlog import daemon_config, nip_with_checksum

from ksefd.config import load_config
from ksefd.daemon.service import serve
from ksefd.logs import configure_logging

KEEP = ("ksefd/", "aiohttp/", "asyncio/")


def source_of(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frames worth naming: up to 4, from ksefd, aiohttp or asyncio."""
    frames = [f for f in stack if any(k in f.filename for k in KEEP) and "idle_timers" not in f.filename]
    named = [f"{f.filename.split('site-packages/')[-1].split('perf-many/')[-1]}:{f.lineno} {f.name}"
             for f in frames[-4:]]
    return " < ".join(reversed(named)) or "?"


def task_of(obj: Any) -> asyncio.Task[Any] | None:
    """The task a future's or a callback's completion wakes, if any."""
    if isinstance(obj, asyncio.Task):
        return obj
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return owner
    if isinstance(obj, asyncio.Future):
        for callback, _context in getattr(obj, "_callbacks", None) or []:
            found = task_of(callback)
            if found is not None:
                return found
    for arg in getattr(obj, "args", ()):        # functools.partial
        found = task_of(arg)
        if found is not None:
            return found
    return None


def describe(handle: asyncio.Handle) -> str:
    """A handle that nobody recorded: the task it wakes and where that task waits."""
    callback = getattr(handle, "_callback", None)
    task = task_of(callback)
    for arg in getattr(handle, "_args", None) or ():
        task = task or task_of(arg)
    if task is None:
        return "callback " + getattr(callback, "__qualname__", repr(callback))[:80]
    frames = [f"{f.f_code.co_filename.split('perf-many/')[-1].split('site-packages/')[-1]}:{f.f_lineno} "
              f"{f.f_code.co_name}" for f in task.get_stack(limit=6)]
    return f"[{task.get_name().split(':')[0]}] " + " > ".join(frames[-4:])


class Watch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.on = False
        self.set_by: Counter[str] = Counter()
        self.delays: dict[str, list[float]] = defaultdict(list)
        self.fired: Counter[str] = Counter()
        self.woke: Counter[str] = Counter()
        self.wakeups = 0
        self.sources: dict[int, str] = {}
        self._call_at = loop.call_at
        self._select = loop._selector.select  # type: ignore[attr-defined]
        self._run = asyncio.events.Handle._run
        self.ran_after_wake: list[str] = []
        self.blocked = False
        loop.call_at = self.call_at  # type: ignore[method-assign]
        loop._selector.select = self.select  # type: ignore[attr-defined]
        watch = self

        def run(handle: asyncio.Handle) -> None:
            if watch.on:
                name = watch.sources.pop(id(handle), None)
                if name is not None:
                    watch.fired[name] += 1
                elif isinstance(handle, asyncio.TimerHandle):
                    name = "timer set before: " + describe(handle)
                    watch.fired[name] += 1
                else:
                    name = describe(handle)
                watch.ran_after_wake.append(name)
            watch._run(handle)

        asyncio.events.Handle._run = run  # type: ignore[method-assign]

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        handle = self._call_at(when, callback, *args, context=context)
        if self.on:
            task = asyncio.current_task()
            stack = traceback.extract_stack(limit=40)
            where = source_of(stack[:-1])
            if task is not None and "aiohttp" not in where:
                where = f"[{task.get_name().split(':')[0]}] " + where
            self.set_by[where] += 1
            self.delays[where].append(round(when - self.loop.time(), 2))
            self.sources[id(handle)] = "timer " + where
        return handle

    def select(self, timeout: float | None = None) -> Any:
        if self.on and self.ran_after_wake and self.blocked:
            self.woke[self.ran_after_wake[0]] += 1
        self.ran_after_wake = []
        self.blocked = timeout is None or timeout > 0       # a select with timeout 0 is no wake-up
        events = self._select(timeout)
        if self.on and self.blocked:
            self.wakeups += 1
        return events


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ksefd-timers-") as name:
        folder = Path(name)
        sim, base_url = await start_simulator("--limits", "production", log=folder / "sim.log")
        try:
            pairs = [(f"c{n:04d}", nip_with_checksum(526_000_000 + n * 97)) for n in range(args.companies)]
            await make_tokens(base_url, folder, pairs)
            await asyncio.sleep(2)
            log = (folder / "daemon.log").open("w")
            sys.stderr = log
            configure_logging("json", logging.INFO)
            config = load_config(daemon_config(folder, base_url, pairs, receive=True))
            stop = asyncio.Event()
            daemon = asyncio.ensure_future(serve(config, stop))
            while (folder / "daemon.log").read_text().count('"daemon.connected"') < args.companies:
                if daemon.done():
                    raise RuntimeError("the daemon ended: " + (folder / "daemon.log").read_text()[-3000:])
                await asyncio.sleep(0.5)
            await asyncio.sleep(args.settle)
            watch = Watch(asyncio.get_running_loop())
            cpu0, started = time.process_time(), time.perf_counter()
            watch.on = True
            await asyncio.sleep(args.seconds)
            watch.on = False
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
            stop.set()
            await daemon
            sys.stderr = sys.__stderr__
        finally:
            sim.terminate()
            await sim.wait()
    print(f"{args.companies} companies, {elapsed:.0f} s: {watch.wakeups} wake-ups ({watch.wakeups / elapsed:.2f}/s),"
          f" CPU of this process {cpu:.2f} s ({cpu / elapsed * 100:.3f} %, the daemon and this watch)")
    print("wake-ups by what ran first after them:")
    for what, n in watch.woke.most_common():
        print(f"{n:6d}  {what}")
    print("timers set while watched:")
    print(f"{'set':>6} {'fired':>6}  delays (s)  source")
    for where, n in watch.set_by.most_common():
        delays = sorted(set(watch.delays[where]))
        shown = ", ".join(f"{d:g}" for d in delays[:3]) + (f" ... {delays[-1]:g}" if len(delays) > 3 else "")
        print(f"{n:6d} {watch.fired['timer ' + where]:6d}  {shown:<11} {where}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=15)
    asyncio.run(main(parser.parse_args()))
