"""The audit trail: one row per state transition or notable decision, written in the same transaction
as the change it describes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .db import Database, db_time, db_value, py_json, py_time


@dataclass(frozen=True)
class Event:
    id: int
    at: dt.datetime
    company: str | None
    kind: str
    invoice_id: int | None
    session_id: int | None
    from_state: str | None
    to_state: str | None
    detail: Any


async def record(conn: aiosqlite.Connection, *, at: dt.datetime, kind: str, company: str | None = None,
                 invoice_id: int | None = None, session_id: int | None = None, from_state: str | None = None,
                 to_state: str | None = None, detail: Any = None) -> None:
    """Write an event inside the caller's transaction."""
    await conn.execute(
        "INSERT INTO events (at, company, kind, invoice_id, session_id, from_state, to_state, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (db_time(at), company, kind, invoice_id, session_id, db_value(from_state), db_value(to_state),
         db_value(detail) if detail is not None else None))


async def record_many(conn: aiosqlite.Connection, items: list[dict[str, Any]]) -> None:
    """Write many events (keyword sets as for `record`) inside the caller's transaction."""
    # A group's events share their time and often one detail object: each written as text once, not once per
    # event (a batch of 2 500 dumped the same detail 2 500 times, issue #16).
    times: dict[Any, str] = {}
    details: dict[int, tuple[Any, Any]] = {}     # id(detail) -> (detail, its text): the object kept alive

    def text(detail: Any) -> Any:
        if detail is None:
            return None
        known = details.get(id(detail))
        if known is None:
            known = details[id(detail)] = (detail, db_value(detail))
        return known[1]

    def at(value: Any) -> str:
        found = times.get(value)
        if found is None:
            found = times[value] = db_time(value)
        return found

    await conn.executemany(
        "INSERT INTO events (at, company, kind, invoice_id, session_id, from_state, to_state, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(at(e["at"]), e.get("company"), e["kind"], e.get("invoice_id"), e.get("session_id"),
          db_value(e.get("from_state")), db_value(e.get("to_state")), text(e.get("detail"))) for e in items])


def _row(row: aiosqlite.Row) -> Event:
    at = py_time(row["at"])
    assert at is not None
    return Event(id=row["id"], at=at, company=row["company"], kind=row["kind"], invoice_id=row["invoice_id"],
                 session_id=row["session_id"], from_state=row["from_state"], to_state=row["to_state"],
                 detail=py_json(row["detail"]))


class EventRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def for_invoice(self, invoice_id: int) -> list[Event]:
        rows = await self._db.fetch_all("SELECT * FROM events WHERE invoice_id = ? ORDER BY id", (invoice_id,))
        return [_row(r) for r in rows]

    async def for_session(self, session_id: int) -> list[Event]:
        rows = await self._db.fetch_all("SELECT * FROM events WHERE session_id = ? ORDER BY id", (session_id,))
        return [_row(r) for r in rows]

    async def recent(self, company: str | None = None, limit: int = 100) -> list[Event]:
        if company is None:
            rows = await self._db.fetch_all("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self._db.fetch_all("SELECT * FROM events WHERE company = ? ORDER BY id DESC LIMIT ?",
                                            (company, limit))
        return [_row(r) for r in rows]

    async def count_reached(self, company: str, to_state: str, since: dt.datetime) -> int:
        """How many transitions into `to_state` since `since` (e.g. accepted today for `ksefd status`)."""
        row = await self._db.fetch_one(
            "SELECT COUNT(*) FROM events WHERE company = ? AND to_state = ? AND at >= ?",
            (company, to_state, db_time(since)))
        return int(row[0]) if row else 0

    async def add(self, *, at: dt.datetime, kind: str, company: str | None = None, detail: Any = None) -> None:
        """A standalone event (a decision not tied to a transition, e.g. 'offline mode entered')."""
        async with self._db.transaction() as conn:
            await record(conn, at=at, kind=kind, company=company, detail=detail)
