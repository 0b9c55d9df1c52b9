"""One file watcher for every company's outbox (issue #16 point 4).

A watcher per company cost a thread per outbox that woke every 20 ms, and anyio runs at most 40 such
threads at once, so with more than 40 companies a drop into the others' outboxes waited for the rescan.
Here one `watchfiles.awatch` follows all outboxes and pokes the intake of the company whose outbox changed.
Intake still rescans every `rescan_interval_seconds`: network shares do not report changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
import watchfiles

from ksefd import spool

log = structlog.get_logger("ksefd.daemon.outbox")

STEP_MS = 50            # how long the watcher gathers events before it reports them (and looks at `stop`)


class OutboxWatcher:
    def __init__(self) -> None:
        self._pokes: dict[Path, asyncio.Event] = {}

    def register(self, outbox: Path, poke: asyncio.Event) -> None:
        """Set `poke` whenever a candidate file (spool.is_candidate) appears or changes in `outbox`."""
        self._pokes[outbox.resolve()] = poke

    async def run(self, stop: asyncio.Event) -> None:
        folders = [path for path in self._pokes if path.is_dir()]
        if not folders:
            return

        def only_candidates(_change: watchfiles.Change, path: str) -> bool:
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
