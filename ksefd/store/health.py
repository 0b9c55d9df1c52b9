"""Company holds (a person must act: credentials expired, permission missing) and the heartbeat that
feeds `ksefd status`, /healthz, /metrics and sd_notify (DESIGN.md convention 7)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from . import events
from .db import Database, db_time, db_value, py_json, py_time, required_time


@dataclass(frozen=True)
class Hold:
    company: str
    code: str                           # stable, e.g. "credentials-expired", "missing-permission"
    reason: str                         # what a person should do, in words
    since: dt.datetime
    next_retry_at: dt.datetime | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class Beat:
    component: str
    pid: int
    at: dt.datetime
    detail: Any



def _hold(r: aiosqlite.Row) -> Hold:
    return Hold(company=r["company"], code=r["code"], reason=r["reason"], since=required_time(r["since"]),
                next_retry_at=py_time(r["next_retry_at"]), updated_at=required_time(r["updated_at"]))


class HoldRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def hold(self, company: str, code: str, reason: str, next_retry_at: dt.datetime | None) -> Hold:
        """Put a company on hold, or update its hold (keeping `since` from the first time)."""
        now = self._now()
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO company_holds (company, code, reason, since, next_retry_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (company) DO UPDATE SET code = excluded.code, "
                "reason = excluded.reason, next_retry_at = excluded.next_retry_at, updated_at = excluded.updated_at",
                (company, code, reason, db_time(now), db_time(next_retry_at) if next_retry_at else None,
                 db_time(now)))
            await events.record(conn, at=now, kind="hold", company=company, to_state="held",
                                detail={"code": code, "reason": reason})
            async with conn.execute("SELECT * FROM company_holds WHERE company = ?", (company,)) as cursor:
                row = await cursor.fetchone()
        assert row is not None
        return _hold(row)

    async def release(self, company: str) -> bool:
        now = self._now()
        async with self._db.transaction() as conn:
            cursor = await conn.execute("DELETE FROM company_holds WHERE company = ?", (company,))
            released = cursor.rowcount == 1
            if released:
                await events.record(conn, at=now, kind="hold", company=company, from_state="held",
                                    to_state="released")
            return released

    async def get(self, company: str) -> Hold | None:
        row = await self._db.fetch_one("SELECT * FROM company_holds WHERE company = ?", (company,))
        return _hold(row) if row else None

    async def all(self) -> list[Hold]:
        return [_hold(r) for r in await self._db.fetch_all("SELECT * FROM company_holds ORDER BY company")]


class HeartbeatRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def beat(self, component: str, detail: Any = None) -> None:
        # One statement, committed alone: an idle daemon's most frequent wake-up (every 10 s) costs one round trip
        # to the database thread, not three (issue #16 point 4).
        await self._db.write_one(
            "INSERT INTO heartbeat (component, pid, at, detail) VALUES (?, ?, ?, ?) ON CONFLICT (component) "
            "DO UPDATE SET pid = excluded.pid, at = excluded.at, detail = excluded.detail",
            (component, os.getpid(), db_time(self._now()), db_value(detail) if detail is not None else None))

    async def read(self) -> list[Beat]:
        rows = await self._db.fetch_all("SELECT * FROM heartbeat ORDER BY component")
        return [Beat(component=r["component"], pid=r["pid"], at=required_time(r["at"]), detail=py_json(r["detail"]))
                for r in rows]
