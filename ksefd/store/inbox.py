"""Receiving state (issue #6): one checkpoint per (company, subject type) and every KSeF number
delivered, so an invoice reaches the inbox once, even after the ERP has moved the file away.

The checkpoint moves only together with, or after, the record of what was delivered
(`advance`): a crash or a failed write leaves the old checkpoint, the next cycle fetches the same
window again and the delivered set drops what already arrived (PROTOCOL.md §6.4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiosqlite

from .db import Database, db_time, py_time

_CHUNK = 500   # SQL parameters per IN (...) query


@dataclass(frozen=True)
class Checkpoint:
    company: str
    subject_type: str
    next_from: dt.datetime | None      # where the next export window starts; None before the first package
    last_cycle_at: dt.datetime | None
    last_reconcile_at: dt.datetime | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class Delivery:
    ksef_number: str
    subject_type: str
    sha256: str                        # Base64 SHA-256 of the delivered XML (checked against the metadata)
    path: str                          # where it was written (relative to the inbox or absolute)
    permanent_storage_date: dt.datetime | None = None
    delivered_at: dt.datetime | None = None   # set by the store


def _checkpoint(r: aiosqlite.Row) -> Checkpoint:
    updated = py_time(r["updated_at"])
    assert updated is not None
    return Checkpoint(company=r["company"], subject_type=r["subject_type"], next_from=py_time(r["next_from"]),
                      last_cycle_at=py_time(r["last_cycle_at"]), last_reconcile_at=py_time(r["last_reconcile_at"]),
                      updated_at=updated)


def _delivery(r: aiosqlite.Row) -> Delivery:
    return Delivery(ksef_number=r["ksef_number"], subject_type=r["subject_type"], sha256=r["sha256"], path=r["path"],
                    permanent_storage_date=py_time(r["permanent_storage_date"]),
                    delivered_at=py_time(r["delivered_at"]))


class InboxRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def checkpoint(self, company: str, subject_type: str) -> Checkpoint | None:
        row = await self._db.fetch_one("SELECT * FROM inbox_checkpoints WHERE company = ? AND subject_type = ?",
                                       (company, subject_type))
        return _checkpoint(row) if row else None

    async def checkpoints(self, company: str | None = None) -> list[Checkpoint]:
        if company is None:
            rows = await self._db.fetch_all("SELECT * FROM inbox_checkpoints ORDER BY company, subject_type")
        else:
            rows = await self._db.fetch_all("SELECT * FROM inbox_checkpoints WHERE company = ? ORDER BY subject_type",
                                            (company,))
        return [_checkpoint(r) for r in rows]

    async def advance(self, company: str, subject_type: str, next_from: dt.datetime,
                      delivered: Iterable[Delivery] = ()) -> None:
        """Record the package's deliveries and move the checkpoint, in one transaction. Call it only
        after every file of the package is safely written."""
        async with self._db.transaction() as conn:
            await self._insert_deliveries(conn, company, delivered)
            await self._upsert(conn, company, subject_type, "next_from", db_time(next_from))

    async def record_delivered(self, company: str, delivered: Iterable[Delivery]) -> None:
        """Record deliveries without moving the checkpoint (files written one by one, or a reconciliation)."""
        async with self._db.transaction() as conn:
            await self._insert_deliveries(conn, company, delivered)

    async def mark_cycle(self, company: str, subject_type: str, at: dt.datetime) -> None:
        async with self._db.transaction() as conn:
            await self._upsert(conn, company, subject_type, "last_cycle_at", db_time(at))

    async def mark_reconciled(self, company: str, subject_type: str, at: dt.datetime) -> None:
        async with self._db.transaction() as conn:
            await self._upsert(conn, company, subject_type, "last_reconcile_at", db_time(at))

    async def is_delivered(self, company: str, ksef_number: str) -> bool:
        return await self.delivery(company, ksef_number) is not None

    async def delivery(self, company: str, ksef_number: str) -> Delivery | None:
        row = await self._db.fetch_one("SELECT * FROM inbox_delivered WHERE company = ? AND ksef_number = ?",
                                       (company, ksef_number))
        return _delivery(row) if row else None

    async def delivered_among(self, company: str, ksef_numbers: Iterable[str]) -> set[str]:
        """Which of these KSeF numbers were already delivered (deduplicating a package)."""
        wanted = list(dict.fromkeys(ksef_numbers))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            rows = await self._db.fetch_all(
                f"SELECT ksef_number FROM inbox_delivered WHERE company = ? AND ksef_number IN "
                f"({', '.join('?' * len(chunk))})", (company, *chunk))
            found.update(str(r[0]) for r in rows)
        return found

    async def delivered_count(self, company: str, subject_type: str | None = None) -> int:
        if subject_type is None:
            row = await self._db.fetch_one("SELECT COUNT(*) FROM inbox_delivered WHERE company = ?", (company,))
        else:
            row = await self._db.fetch_one(
                "SELECT COUNT(*) FROM inbox_delivered WHERE company = ? AND subject_type = ?", (company, subject_type))
        return int(row[0]) if row else 0

    async def _insert_deliveries(self, conn: aiosqlite.Connection, company: str,
                                 delivered: Iterable[Delivery]) -> None:
        now = db_time(self._now())
        # First delivery wins: a KSeF number seen again (a shared boundary instant) is not re-recorded.
        await conn.executemany(
            "INSERT INTO inbox_delivered (company, ksef_number, subject_type, sha256, path, permanent_storage_date, "
            "delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(company, d.ksef_number, d.subject_type, d.sha256, d.path,
              db_time(d.permanent_storage_date) if d.permanent_storage_date else None, now) for d in delivered])

    async def _upsert(self, conn: aiosqlite.Connection, company: str, subject_type: str, column: str,
                      value: str) -> None:
        assert column in ("next_from", "last_cycle_at", "last_reconcile_at")
        now = db_time(self._now())
        await conn.execute(
            f"INSERT INTO inbox_checkpoints (company, subject_type, {column}, updated_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (company, subject_type) DO UPDATE SET {column} = excluded.{column}, "
            "updated_at = excluded.updated_at", (company, subject_type, value, now))
