"""One file watcher for every company's outbox (issue #16 point 4).

A watcher per company cost a thread per outbox that woke every 20 ms, and anyio runs at most 40 such
threads at once, so with more than 40 companies a drop into the others' outboxes waited for the rescan.
Here one watcher follows all outboxes and pokes the intake of the company whose outbox changed: on Linux
inotify read on the event loop itself (inotify.py: no thread, no wake-up while nothing happens), elsewhere
(or when inotify cannot be had) one `watchfiles.awatch`. Intake still rescans every
`rescan_interval_seconds` where changes may go unreported (network shares, FUSE, the watchfiles fallback);
an outbox on a local file system that inotify watches is rescanned only every TRUSTED_RESCAN_SECONDS (an
hour), as a safety net (`rescan_interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import structlog

from ksefd import spool

from ..runtime import IDLE_LOOK_SECONDS

log = structlog.get_logger("ksefd.daemon.outbox")

STEP_MS = 50            # how long the watcher gathers events before it reports them (and looks at `stop`)
# An outbox (or outbox/offline/) inotify watches on a local file system: the rescan is only a safety net, as
# rare as the company loops' own (runtime.IDLE_LOOK_SECONDS); every 15 min it woke each company's intake and
# offline desk, which looked at the state database (issue #16 point 4).
TRUSTED_RESCAN_SECONDS = IDLE_LOOK_SECONDS


class OutboxWatcher:
    def __init__(self) -> None:
        self._pokes: dict[Path, asyncio.Event] = {}
        self._trusted: set[Path] = set()       # outboxes inotify watches on a local file system, now
        self._create: set[Path] = set()

    def register(self, outbox: Path, poke: asyncio.Event, *, create: bool = False) -> None:
        """Set `poke` whenever a candidate file (spool.is_candidate) appears or changes in `outbox` (a folder
        the watcher makes first when `create`, if the folder above it exists)."""
        self._pokes[outbox.resolve()] = poke
        if create:
            self._create.add(outbox.resolve())

    def rescan_interval(self, outbox: Path, configured: float) -> float:
        """How often intake should look at `outbox` by itself: `configured`, unless every change there is
        reported (then at least TRUSTED_RESCAN_SECONDS)."""
        if outbox.resolve() in self._trusted:
            return max(configured, TRUSTED_RESCAN_SECONDS)
        return configured

    async def run(self, stop: asyncio.Event) -> None:
        for folder in self._create:
            with contextlib.suppress(OSError):
                folder.mkdir(exist_ok=True)
        folders = [path for path in self._pokes if path.is_dir()]
        if not folders:
            return
        if sys.platform == "linux":
            try:
                await self._run_inotify(folders, stop)
                return
            except OSError as exc:        # no inotify (a container without it, the watch limit reached)
                log.warning("outbox.inotify_unavailable", error=str(exc), fallback="watchfiles")
                self._trusted.clear()
        await self._run_watchfiles(folders, stop)

    async def _run_inotify(self, folders: list[Path], stop: asyncio.Event) -> None:
        from .inotify import GONE, IN_Q_OVERFLOW, Inotify, local_folders

        watches: dict[int, Path] = {}
        local: set[Path] = set()
        inotify = Inotify()
        loop = asyncio.get_running_loop()
        try:
            for folder in folders:
                watches[inotify.add(folder)] = folder
            local = local_folders(folders)      # /proc/self/mountinfo: read from memory, no thread needed
            self._trusted = local         # a rescan planned before this (the configured interval) still happens

            def readable() -> None:
                for wd, mask, name in inotify.read():
                    folder = watches.get(wd)
                    if mask & IN_Q_OVERFLOW:          # events were lost: every intake looks
                        for poke in self._pokes.values():
                            poke.set()
                    elif folder is not None and mask & GONE:
                        self._trusted.discard(folder)     # the folder went away: intake's rescan takes over
                        self._pokes[folder].set()
                    elif folder is not None and spool.is_candidate(name):
                        self._pokes[folder].set()

            loop.add_reader(inotify.fd, readable)
            log.info("outbox.watching", folders=len(folders), how="inotify", local=len(local))
            try:
                await stop.wait()
            finally:
                loop.remove_reader(inotify.fd)
        finally:
            if self._trusted is local:    # not a newer run's (a reload restarts the watcher)
                self._trusted = set()
            inotify.close()

    async def _run_watchfiles(self, folders: list[Path], stop: asyncio.Event) -> None:
        import watchfiles  # here: an idle daemon on Linux never needs it (nor its anyio)

        def only_candidates(_change: object, path: str) -> bool:
            return spool.is_candidate(Path(path).name)

        log.info("outbox.watching", folders=len(folders))
        while not stop.is_set():
            try:
                async for changes in watchfiles.awatch(*folders, watch_filter=only_candidates, stop_event=stop,
                                                       recursive=False, debounce=STEP_MS * 4, step=STEP_MS):
                    for _change, path in changes:
                        poke = self._pokes.get(Path(path).parent)
                        if poke is not None:
                            poke.set()
                return
            except (RuntimeError, OSError) as exc:   # no inotify (odd file systems): intake's rescan covers it
                log.warning("outbox.watch_unavailable", error=str(exc))
                with contextlib.suppress(asyncio.CancelledError):
                    await stop.wait()
                return
            except Exception as exc:
                # e.g. a dropped name that is not UTF-8, which watchfiles cannot decode (issue #15): intake
                # rescans at once (and refuses that name), and watching starts again.
                log.warning("outbox.watch_restarted", error=str(exc))
                for poke in self._pokes.values():
                    poke.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
