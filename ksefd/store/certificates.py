"""Renewals of KSeF certificates (daemon/certificate_renewal.py): one row per certificate being replaced, keyed
by the old certificate's fingerprint and type, so one person's certificate used by many companies is renewed
once. `state` is the step reached; each step is written before the next one talks to KSeF or the disk:

    planned -> key_saved -> submitting -> submitted -> issued -> saved -> switching -> switched
                                                                     (any) -> failed (retried at next_attempt_at)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .db import Database, StoreError, assignments, db_time, db_value, py_json, py_time

RENEWAL_STATES = ("planned", "key_saved", "submitting", "submitted", "issued", "saved", "switching", "switched",
                  "failed")
_FIELDS = frozenset({"state", "valid_from", "reference", "serial", "new_valid_to", "attempts", "next_attempt_at",
                     "last_error", "name", "key_path", "certificate_path", "password_file", "old_valid_to",
                     "companies"})


@dataclass(frozen=True)
class Renewal:
    id: int
    certificate_type: str
    old_fingerprint: str
    old_serial: str
    old_valid_to: dt.datetime
    certificate_path: str
    key_path: str
    password_file: str
    companies: list[str]
    state: str
    name: str
    valid_from: dt.datetime | None
    reference: str | None
    serial: str | None
    new_valid_to: dt.datetime | None
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


def _row(row: Any) -> Renewal:
    return Renewal(id=row["id"], certificate_type=row["certificate_type"], old_fingerprint=row["old_fingerprint"],
                   old_serial=row["old_serial"], old_valid_to=py_time(row["old_valid_to"]),  # type: ignore[arg-type]
                   certificate_path=row["certificate_path"], key_path=row["key_path"],
                   password_file=row["password_file"], companies=py_json(row["companies"]), state=row["state"],
                   name=row["name"], valid_from=py_time(row["valid_from"]), reference=row["reference"],
                   serial=row["serial"], new_valid_to=py_time(row["new_valid_to"]), attempts=row["attempts"],
                   next_attempt_at=py_time(row["next_attempt_at"]), last_error=row["last_error"],
                   created_at=py_time(row["created_at"]),  # type: ignore[arg-type]
                   updated_at=py_time(row["updated_at"]))  # type: ignore[arg-type]


class CertificateRenewalRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def find(self, old_fingerprint: str, certificate_type: str) -> Renewal | None:
        row = await self._db.fetch_one("SELECT * FROM certificate_renewals WHERE old_fingerprint = ? AND "
                                       "certificate_type = ?", (old_fingerprint, certificate_type))
        return _row(row) if row else None

    async def get(self, renewal_id: int) -> Renewal:
        row = await self._db.fetch_one("SELECT * FROM certificate_renewals WHERE id = ?", (renewal_id,))
        if row is None:
            raise StoreError(f"no certificate renewal {renewal_id}")
        return _row(row)

    async def all(self) -> list[Renewal]:
        return [_row(r) for r in await self._db.fetch_all("SELECT * FROM certificate_renewals ORDER BY id")]

    async def plan(self, *, certificate_type: str, old_fingerprint: str, old_serial: str, old_valid_to: dt.datetime,
                   certificate_path: str, key_path: str, password_file: str, companies: list[str]) -> Renewal:
        """The row for this certificate: the existing one (whatever its state), or a new one in `planned`.
        The successor's name carries the row id, which finds it in KSeF again after a lost answer."""
        async with self._db.transaction() as conn:
            async with conn.execute("SELECT id FROM certificate_renewals WHERE old_fingerprint = ? AND "
                                    "certificate_type = ?", (old_fingerprint, certificate_type)) as cursor:
                found = await cursor.fetchone()
            if found is None:
                now = db_time(self._now())
                cursor = await conn.execute(
                    "INSERT INTO certificate_renewals (certificate_type, old_fingerprint, old_serial, old_valid_to, "
                    "certificate_path, key_path, password_file, companies, state, name, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'planned', '', ?, ?)",
                    (certificate_type, old_fingerprint, old_serial, db_time(old_valid_to), certificate_path, key_path,
                     password_file, db_value(companies), now, now))
                renewal_id = int(cursor.lastrowid or 0)
                stamp = self._now().astimezone(dt.UTC).strftime("%Y%m%d")
                await conn.execute("UPDATE certificate_renewals SET name = ? WHERE id = ?",
                                   (f"ksefd odnowienie {renewal_id} {stamp}", renewal_id))
            else:
                renewal_id = int(found[0])
        return await self.get(renewal_id)

    async def update(self, renewal_id: int, **fields: Any) -> Renewal:
        sql, values = assignments(fields, _FIELDS, "certificate renewal")
        async with self._db.transaction() as conn:
            await conn.execute(f"UPDATE certificate_renewals SET updated_at = ?{sql} WHERE id = ?",
                               [db_time(self._now()), *values, renewal_id])
        return await self.get(renewal_id)
