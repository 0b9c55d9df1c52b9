"""Offline invoicing's own state (PROTOCOL.md §8): Latarnia announcements per KSeF target, offline invoices
(mode, deadline, artefacts, warnings given, a technical correction's original) and offline24 requests.

The invoice's state itself stays in `invoices` (moved only through the ledger); `invoices.offline` and
`invoices.offline_deadline` mirror what is here so the queue queries need no join.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .db import Database, db_time, py_time, required_time


@dataclass(frozen=True)
class Announcement:
    """One Latarnia message (`GET /messages`, PROTOCOL.md §1)."""

    message_id: str
    event_id: int | None
    category: str               # FAILURE | TOTAL_FAILURE | MAINTENANCE
    type: str                   # FAILURE_START | FAILURE_END | MAINTENANCE_ANNOUNCEMENT
    title: str
    text: str
    start: dt.datetime | None
    end: dt.datetime | None
    version: int | None
    published: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {"id": self.message_id, "eventId": self.event_id, "category": self.category, "type": self.type,
                "title": self.title, "text": self.text, "start": iso(self.start), "end": iso(self.end),
                "version": self.version, "published": iso(self.published)}


@dataclass(frozen=True)
class OfflineInvoice:
    invoice_id: int
    company: str
    mode: str                   # offline24 | unavailability | failure | total-failure
    reason: str
    event_id: int | None
    issued_at: dt.datetime
    deadline: dt.datetime | None
    stem: str
    kod2: bool
    warned: int                 # 0, 50 or 90
    missed: bool
    corrects_id: int | None
    corrects_hash: str | None


def _time(value: dt.datetime | None) -> str | None:
    return db_time(value) if value is not None else None


def _announcement(r: aiosqlite.Row) -> Announcement:
    return Announcement(r["message_id"], r["event_id"], r["category"], r["type"], r["title"] or "", r["text"] or "",
                        py_time(r["start"]), py_time(r["end"]), r["version"], py_time(r["published"]))


def _offline(r: aiosqlite.Row) -> OfflineInvoice:
    return OfflineInvoice(r["invoice_id"], r["company"], r["mode"], r["reason"], r["event_id"],
                          required_time(r["issued_at"]), py_time(r["deadline"]), r["stem"], bool(r["kod2"]),
                          int(r["warned"]), bool(r["missed"]), r["corrects_id"], r["corrects_hash"])


class AnnouncementRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def record(self, target: str, items: Sequence[Announcement]) -> list[Announcement]:
        """Keep the messages; returns those that are new or changed (a newer version)."""
        changed: list[Announcement] = []
        async with self._db.transaction() as conn:
            for a in items:
                async with conn.execute("SELECT version, end FROM ksef_announcements WHERE target = ? AND "
                                        "message_id = ?", (target, a.message_id)) as cursor:
                    known = await cursor.fetchone()
                if known is not None and known["version"] == a.version and known["end"] == _time(a.end):
                    continue
                await conn.execute(
                    "INSERT INTO ksef_announcements (target, message_id, event_id, category, type, title, text, "
                    "start, end, version, published, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (target, message_id) DO UPDATE SET event_id = excluded.event_id, "
                    "category = excluded.category, type = excluded.type, title = excluded.title, "
                    "text = excluded.text, start = excluded.start, end = excluded.end, version = excluded.version, "
                    "published = excluded.published, seen_at = excluded.seen_at",
                    (target, a.message_id, a.event_id, a.category, a.type, a.title, a.text, _time(a.start),
                     _time(a.end), a.version, _time(a.published), db_time(self._now())))
                changed.append(a)
        return changed

    async def history(self, target: str) -> list[Announcement]:
        rows = await self._db.fetch_all("SELECT * FROM ksef_announcements WHERE target = ? ORDER BY start, "
                                        "message_id", (target,))
        return [_announcement(r) for r in rows]


class OfflineRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def add(self, item: OfflineInvoice) -> None:
        """Recorded right before the invoice moves to OFFLINE (offline=1 then). A record left by a crash between
        the two, for an invoice that never became OFFLINE, is replaced: it describes nothing the ERP has."""
        await self._db_execute(
            "INSERT INTO offline_invoices (invoice_id, company, mode, reason, event_id, issued_at, deadline, stem, "
            "kod2, warned, missed, corrects_id, corrects_hash, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?) ON CONFLICT (invoice_id) DO UPDATE SET mode = excluded.mode, reason = excluded.reason, "
            "event_id = excluded.event_id, issued_at = excluded.issued_at, deadline = excluded.deadline, "
            "stem = excluded.stem, kod2 = excluded.kod2, warned = 0, missed = 0, corrects_id = excluded.corrects_id, "
            "corrects_hash = excluded.corrects_hash, updated_at = excluded.updated_at",
            (item.invoice_id, item.company, item.mode, item.reason, item.event_id, db_time(item.issued_at),
             _time(item.deadline), item.stem, int(item.kod2), item.warned, int(item.missed), item.corrects_id,
             item.corrects_hash, db_time(self._now())))

    async def discard(self, invoice_id: int) -> None:
        """The record of an invoice that did not become OFFLINE after all (another task moved it first)."""
        await self._db_execute("DELETE FROM offline_invoices WHERE invoice_id = ?", (invoice_id,))

    async def get(self, invoice_id: int) -> OfflineInvoice | None:
        row = await self._db.fetch_one("SELECT * FROM offline_invoices WHERE invoice_id = ?", (invoice_id,))
        return _offline(row) if row else None

    async def of_company(self, company: str, invoice_ids: Sequence[int] | None = None) -> list[OfflineInvoice]:
        rows = await self._db.fetch_all("SELECT * FROM offline_invoices WHERE company = ? ORDER BY invoice_id",
                                        (company,))
        found = [_offline(r) for r in rows]
        if invoice_ids is not None:
            wanted = set(invoice_ids)
            found = [f for f in found if f.invoice_id in wanted]
        return found

    async def waiting(self, company: str) -> list[OfflineInvoice]:
        """Offline invoices not yet finished (neither DONE nor REJECTED)."""
        rows = await self._db.fetch_all(
            "SELECT o.* FROM offline_invoices o JOIN invoices i ON i.id = o.invoice_id WHERE o.company = ? AND "
            "i.offline = 1 AND i.state NOT IN ('done', 'rejected', 'accepted', 'upo_saved') "
            "ORDER BY o.deadline IS NULL, o.deadline, o.invoice_id", (company,))
        return [_offline(r) for r in rows]

    async def set_deadline(self, invoice_id: int, deadline: dt.datetime | None) -> None:
        """A new deadline (a failure announced or ended while it waits, PROTOCOL.md §8.1), mirrored in invoices."""
        now = db_time(self._now())
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE offline_invoices SET deadline = ?, updated_at = ? WHERE invoice_id = ?",
                               (_time(deadline), now, invoice_id))
            await conn.execute("UPDATE invoices SET offline_deadline = ? WHERE id = ?", (_time(deadline), invoice_id))

    async def mark(self, invoice_id: int, *, warned: int | None = None, missed: bool | None = None) -> None:
        sets, values = [], []
        if warned is not None:
            sets.append("warned = ?")
            values.append(warned)
        if missed is not None:
            sets.append("missed = ?")
            values.append(int(missed))
        if sets:
            await self._db_execute(f"UPDATE offline_invoices SET {', '.join(sets)}, updated_at = ? WHERE "
                                   "invoice_id = ?", (*values, db_time(self._now()), invoice_id))

    async def correction_of(self, original_id: int) -> OfflineInvoice | None:
        row = await self._db.fetch_one("SELECT * FROM offline_invoices WHERE corrects_id = ? ORDER BY invoice_id "
                                       "DESC LIMIT 1", (original_id,))
        return _offline(row) if row else None

    async def queued_offline_ids(self, company: str) -> list[int]:
        """Offline invoices back in QUEUED (KSeF did not take a send): they return to OFFLINE."""
        rows = await self._db.fetch_all("SELECT id FROM invoices WHERE company = ? AND state = 'queued' AND "
                                        "offline = 1 ORDER BY id", (company,))
        return [int(r[0]) for r in rows]

    async def special(self, company: str) -> list[tuple[int, bool, int | None]]:
        """Waiting invoices (QUEUED, DEFERRED, HELD; not yet offline) that must be issued offline whatever
        KSeF's state: (id, offline24 requested through outbox/offline/, the rejected offline invoice with the
        same seller, type and number that it technically corrects, PROTOCOL.md §8.4)."""
        # Driven from the two small sets (requests; rejected offline invoices) through the hash and key indexes,
        # so a large queue costs nothing here: the dispatcher asks before every round.
        waiting = "i.company = ? AND i.state IN ('queued', 'deferred', 'held') AND i.offline = 0"
        requested = await self._db.fetch_all(
            f"SELECT i.id FROM offline_requests r JOIN invoices i ON i.company = r.company AND i.sha256 = r.sha256 "
            f"WHERE r.company = ? AND {waiting}", (company, company))
        corrections = await self._db.fetch_all(
            f"SELECT i.id, MIN(o.id) FROM invoices o JOIN invoices i ON i.seller_nip = o.seller_nip AND "
            f"i.invoice_type = o.invoice_type AND i.invoice_number = o.invoice_number AND i.sha256 != o.sha256 "
            f"WHERE o.company = ? AND o.state = 'rejected' AND o.offline = 1 AND o.status_code IS NOT NULL AND "
            f"o.status_code != 410 AND {waiting} GROUP BY i.id", (company, company))
        found: dict[int, tuple[int, bool, int | None]] = {int(r[0]): (int(r[0]), True, None) for r in requested}
        for r in corrections:
            found[int(r[0])] = (int(r[0]), int(r[0]) in found, int(r[1]))
        return [found[k] for k in sorted(found)]

    # --- offline24 on demand ---------------------------------------------------------------------

    async def request(self, company: str, sha256: str, file_name: str) -> None:
        await self._db_execute("INSERT INTO offline_requests (company, sha256, file_name, requested_at) VALUES "
                               "(?, ?, ?, ?) ON CONFLICT (company, sha256) DO NOTHING",
                               (company, sha256, file_name, db_time(self._now())))

    async def requested(self, company: str, sha256: str) -> bool:
        row = await self._db.fetch_one("SELECT 1 FROM offline_requests WHERE company = ? AND sha256 = ?",
                                       (company, sha256))
        return row is not None

    async def _db_execute(self, sql: str, params: tuple[Any, ...]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(sql, params)
