"""`ksefd reload` wakes the running daemon instead of the daemon polling for it (issue #16 point 4).

The request itself is a row in the state database (reload.py). An idle daemon used to read that row every
2 s, its most frequent wake-up. Now `ksefd reload` also writes `STATE_DB.reload` next to the database after
the row, and on Linux the daemon watches the database's folder with inotify for that name: no timer at all.
Only the creation, a close after writing, a rename in or a touch of a file raise an event in the mask; the
database's own writes (modifications of its -wal file) raise none, so the daemon's work does not wake it.

Elsewhere (no inotify), or when the folder is not on a local file system (a change made on another machine
raises no event), `open_nudge` gives None and the daemon looks for the row every RELOAD_LOOK_SECONDS as before.
SIGHUP works everywhere it exists, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("ksefd.daemon")


def nudge_path(state_db: Path) -> Path:
    """The file `ksefd reload` writes after its request: STATE_DB.reload (beside STATE_DB.lock)."""
    return state_db.with_name(state_db.name + ".reload")


def nudge(state_db: Path, text: str) -> None:
    """Wake a daemon watching `state_db`'s folder. A failure is no error: the request row is what counts, and a
    daemon without the watch still finds it by looking."""
    with contextlib.suppress(OSError):
        nudge_path(state_db).write_text(text + "\n", encoding="utf-8")


class Nudge:
    """Sets `event` when STATE_DB.reload is written; read on the event loop (`loop.add_reader`), no thread."""

    def __init__(self, state_db: Path, inotify: Any, mask: int, overflow: int) -> None:
        self.name = nudge_path(state_db).name
        self.event = asyncio.Event()
        self._inotify = inotify
        self._overflow = overflow
        inotify.add_watch(os.fsencode(state_db.parent), mask)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(inotify.fileno(), self._read)

    def _read(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        if any(e.name == self.name or e.mask & self._overflow for e in events):
            self.event.set()

    def close(self) -> None:
        self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()


def open_nudge(state_db: Path) -> Nudge | None:
    """The watch, or None where the daemon must keep looking (not Linux, a network folder, no watch left)."""
    if not sys.platform.startswith("linux"):
        return None
    from inotify_simple import INotify, flags

    from .outbox.inotify import folder_is_local

    if not folder_is_local(state_db.parent):
        return None
    inotify = INotify(nonblocking=True)
    mask = flags.CREATE | flags.CLOSE_WRITE | flags.MOVED_TO | flags.ATTRIB | flags.ONLYDIR
    try:
        return Nudge(state_db, inotify, mask, int(flags.Q_OVERFLOW))
    except OSError as exc:       # e.g. the user's inotify watches are used up: look as before
        inotify.close()
        log.warning("daemon.reload_watch_unavailable", folder=str(state_db.parent), error=str(exc))
        return None
