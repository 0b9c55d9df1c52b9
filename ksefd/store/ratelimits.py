"""The rate limiter's journal (`ksefd.ksef.ratelimit_journal.LimiterJournal`, issue #10 point 1): one row
per grant in `rate_grants`, one per running 429 block in `rate_blocks`, and in the kv table (namespace
`ratelimit`) the limits KSeF reported per context and a run marker that tells a clean stop from a crash.

A grant is committed before its request is sent, with synchronous=NORMAL (`Database.transact(..., synced=
False)`): in WAL mode that survives a kill -9 without an fsync per request; the limiter batches grants
taken at once into one transaction, and a burst of one group commits a few spare rows ahead (deleted again
when unused, ksef/ratelimit_journal.py). The run marker keeps the boot identity, so the next start knows
whether only the process died (every committed row survived) or the machine went down (the last
unsynced commits may be gone); ksef/ratelimit.py decides what to presume then.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from .db import Database, db_time
from .kv import RATE_LIMITS

RUN_KEY = "run"
LIMITS_PREFIX = "limits:"
OLD_SNAPSHOT_KEY = "limiter"          # the snapshot saved every 5 s before issue #10; superseded by the rows
PRUNE_EVERY_S = 60.0
KEEP_S = 3600.0 + 60.0                 # the hour window and a margin; older grants no longer count

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_PROC_STAT = Path("/proc/stat")

NewGrant = tuple[str, str, float]                       # context, group, granted at
GrantRow = tuple[int, str, str, float, float | None]    # row id, context, group, granted at, answered at


@dataclass(frozen=True)
class BootIdentity:
    boot_id: str | None                # changes at every boot (Linux); None where we cannot read one
    boot_time: float | None            # when this boot began, epoch seconds


def current_boot() -> BootIdentity:
    """This machine's boot, where the OS tells it (Linux); elsewhere unknown, which makes the limiter presume
    the worst after an unclean stop."""
    boot_id = None
    boot_time = None
    try:
        boot_id = _BOOT_ID.read_text(encoding="ascii").strip() or None
        for line in _PROC_STAT.read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                boot_time = float(line.split()[1])
    except (OSError, ValueError):
        pass
    return BootIdentity(boot_id, boot_time)


@dataclass(frozen=True)
class PreviousRun:
    """How the previous run ended (`ksefd.ksef.ratelimit_journal.PreviousRun`)."""

    clean: bool
    same_boot: bool | None
    boot_time: float | None
    pid: int | None = None


class RateLimitJournal:
    def __init__(self, db: Database, now: Callable[[], dt.datetime],
                 boot: Callable[[], BootIdentity] = current_boot) -> None:
        self._db = db
        self._now = now
        self._boot = boot
        self._pruned_at = 0.0

    async def start_run(self) -> PreviousRun | None:
        boot = self._boot()
        row = await self._db.fetch_one("SELECT value FROM kv WHERE namespace = ? AND key = ?", (RATE_LIMITS, RUN_KEY))
        previous = _previous(row[0] if row else None, boot)
        marker = {"pid": os.getpid(), "bootId": boot.boot_id, "startedAt": self._now().timestamp(), "clean": False}
        async with self._db.transaction() as conn:
            await _put(conn, RUN_KEY, json.dumps(marker), self._now())
            await conn.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (RATE_LIMITS, OLD_SNAPSHOT_KEY))
        return previous

    async def stop_run(self) -> None:
        row = await self._db.fetch_one("SELECT value FROM kv WHERE namespace = ? AND key = ?", (RATE_LIMITS, RUN_KEY))
        marker = json.loads(row[0]) if row else {"pid": os.getpid()}
        marker.update(clean=True, stoppedAt=self._now().timestamp())
        async with self._db.transaction() as conn:
            await _put(conn, RUN_KEY, json.dumps(marker), self._now())

    async def grants_since(self, since: float) -> list[GrantRow]:
        """Grants counted after `since` (by their answer time when known, else their grant time)."""
        rows = await self._db.fetch_all("SELECT id, context, grp, at, answered FROM rate_grants "
                                        "WHERE coalesce(answered, at) > ? ORDER BY id", (since,))
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3]), None if r[4] is None else float(r[4])) for r in rows]

    async def blocks(self) -> dict[str, float]:
        rows = await self._db.fetch_all("SELECT context, until FROM rate_blocks")
        return {str(r[0]): float(r[1]) for r in rows}

    async def limits(self) -> dict[str, str]:
        rows = await self._db.fetch_all("SELECT key, value FROM kv WHERE namespace = ? AND key LIKE ?",
                                        (RATE_LIMITS, LIMITS_PREFIX + "%"))
        return {str(r[0])[len(LIMITS_PREFIX):]: str(r[1]) for r in rows}

    async def record(self, grants: Sequence[NewGrant], answers: Sequence[tuple[int, float]],
                     blocks: Mapping[str, float], voids: Sequence[int] = ()) -> list[int]:
        """One transaction, no fsync (see the module docstring); old grants pruned about once a minute. The new
        rows' ids are allocated under the write lock (BEGIN IMMEDIATE), so they follow on without a gap.
        `voids`: spare rows never used (ksef/ratelimit_journal.py), deleted."""
        now = self._now().timestamp()
        prune = now - self._pruned_at >= PRUNE_EVERY_S

        def write(conn: sqlite3.Connection) -> list[int]:
            ids: list[int] = []
            if grants:
                row = conn.execute("SELECT coalesce(max(id), 0) FROM rate_grants").fetchone()
                first = int(row[0]) + 1 if row else 1
                ids = list(range(first, first + len(grants)))
                conn.executemany("INSERT INTO rate_grants (id, context, grp, at) VALUES (?, ?, ?, ?)",
                                 [(i, *g) for i, g in zip(ids, grants, strict=True)])
            if answers:
                conn.executemany("UPDATE rate_grants SET answered = max(coalesce(answered, 0), ?) WHERE id = ?",
                                 [(at, row_id) for row_id, at in answers])
            if voids:
                conn.executemany("DELETE FROM rate_grants WHERE id = ?", [(v,) for v in voids])
            for context, until in blocks.items():
                conn.execute("INSERT INTO rate_blocks (context, until) VALUES (?, ?) ON CONFLICT (context) "
                             "DO UPDATE SET until = max(until, excluded.until)", (context, until))
            if prune:
                conn.execute("DELETE FROM rate_grants WHERE coalesce(answered, at) < ?", (now - KEEP_S,))
                conn.execute("DELETE FROM rate_blocks WHERE until < ?", (now,))
            return ids

        # One round trip to the database thread for the whole transaction (Database.transact), not seven.
        ids = await self._db.transact(write, synced=False)
        if prune:
            self._pruned_at = now
        return ids

    async def save_limits(self, context: str, text: str) -> None:
        async with self._db.transaction() as conn:
            await _put(conn, LIMITS_PREFIX + context, text, self._now())


def _previous(text: str | None, boot: BootIdentity) -> PreviousRun | None:
    if text is None:
        return None
    try:
        marker = json.loads(text)
        clean = bool(marker.get("clean"))
        before = marker.get("bootId")
        pid = marker.get("pid")
    except (ValueError, AttributeError):
        return PreviousRun(clean=False, same_boot=None, boot_time=boot.boot_time)
    same = None if before is None or boot.boot_id is None else before == boot.boot_id
    return PreviousRun(clean=clean, same_boot=same, boot_time=boot.boot_time, pid=pid if isinstance(pid, int) else None)


async def _put(conn: aiosqlite.Connection, key: str, value: str, now: dt.datetime) -> None:
    await conn.execute(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (RATE_LIMITS, key, value, db_time(now)))
