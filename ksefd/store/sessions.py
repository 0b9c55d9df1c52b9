"""KSeF sessions (online and batch) and the UPOs saved for them.

A session row is written once KSeF has answered the open (201 with its reference): opening sends no
invoice, so a crash before that leaves at worst an empty session KSeF cancels by itself. What a
restart needs is here: the reference (to close, poll, list invoices by hash) and the state; never
the AES key (see migrations.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite

from . import events
from .db import Database, assignments, db_time, py_json, py_time, required_time
from .invoices import IllegalTransition, StateConflict
from .states import SESSION_TRANSITIONS, UNFINISHED_SESSION_STATES, SessionState

SessionKind = Literal["online", "batch"]
_FIELDS = frozenset({"status_code", "valid_until", "last_used_at", "closed_at", "last_error"})


@dataclass(frozen=True)
class SessionRow:
    id: int
    company: str
    kind: SessionKind
    reference: str
    state: SessionState
    offline_mode: bool
    status_code: int | None
    opened_at: dt.datetime
    valid_until: dt.datetime | None
    last_used_at: dt.datetime | None
    closed_at: dt.datetime | None
    last_error: Any
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Upo:
    id: int
    session_id: int
    invoice_id: int | None
    reference: str
    sha256: str
    xml: bytes
    saved_at: dt.datetime



def _row(r: aiosqlite.Row) -> SessionRow:
    return SessionRow(
        id=r["id"], company=r["company"], kind=r["kind"], reference=r["reference"], state=SessionState(r["state"]),
        offline_mode=bool(r["offline_mode"]), status_code=r["status_code"], opened_at=required_time(r["opened_at"]),
        valid_until=py_time(r["valid_until"]), last_used_at=py_time(r["last_used_at"]),
        closed_at=py_time(r["closed_at"]), last_error=py_json(r["last_error"]),
        created_at=required_time(r["created_at"]), updated_at=required_time(r["updated_at"]))


class SessionRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def add(self, company: str, kind: SessionKind, reference: str, *, opened_at: dt.datetime,
                  valid_until: dt.datetime | None = None, offline_mode: bool = False) -> SessionRow:
        now = self._now()
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO ksef_sessions (company, kind, reference, state, offline_mode, opened_at, valid_until, "
                "last_used_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (company, kind, reference, SessionState.OPEN.value, int(offline_mode), db_time(opened_at),
                 db_time(valid_until) if valid_until else None, db_time(opened_at), db_time(now), db_time(now)))
            session_id = cursor.lastrowid
            assert session_id is not None
            await events.record(conn, at=now, kind="session", company=company, session_id=session_id,
                                to_state=SessionState.OPEN, detail={"kind": kind, "reference": reference})
            return await self._get(conn, session_id)

    async def transition(self, session_id: int, from_state: SessionState, to_state: SessionState, *,
                         detail: Any = None, **fields: Any) -> SessionRow:
        if to_state not in SESSION_TRANSITIONS[from_state]:
            raise IllegalTransition(f"a session cannot go from {from_state} to {to_state}")
        sets, values = assignments(fields, _FIELDS, "session")
        now = self._now()
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                f"UPDATE ksef_sessions SET state = ?, updated_at = ?{sets} WHERE id = ? AND state = ?",
                (to_state.value, db_time(now), *values, session_id, from_state.value))
            if cursor.rowcount != 1:
                async with conn.execute("SELECT state FROM ksef_sessions WHERE id = ?", (session_id,)) as c:
                    found = await c.fetchone()
                raise StateConflict("session", session_id, [from_state], str(found[0]) if found else None)
            row = await self._get(conn, session_id)
            await events.record(conn, at=now, kind="session", company=row.company, session_id=session_id,
                                from_state=from_state, to_state=to_state, detail=detail)
            return row

    async def touch(self, session_id: int, at: dt.datetime) -> None:
        """Note that the session was just used (for the idle-close policy)."""
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE ksef_sessions SET last_used_at = ?, updated_at = ? WHERE id = ?",
                               (db_time(at), db_time(self._now()), session_id))

    async def get(self, session_id: int) -> SessionRow | None:
        row = await self._db.fetch_one("SELECT * FROM ksef_sessions WHERE id = ?", (session_id,))
        return _row(row) if row else None

    async def by_reference(self, reference: str) -> SessionRow | None:
        row = await self._db.fetch_one("SELECT * FROM ksef_sessions WHERE reference = ?", (reference,))
        return _row(row) if row else None

    async def unfinished(self, company: str | None = None, kind: SessionKind | None = None) -> list[SessionRow]:
        """Sessions a restarted daemon must close, poll or abandon (open, closing, closed)."""
        states = [s.value for s in UNFINISHED_SESSION_STATES]
        sql = f"SELECT * FROM ksef_sessions WHERE state IN ({', '.join('?' * len(states))})"
        params: list[Any] = list(states)
        if company is not None:
            sql, params = sql + " AND company = ?", [*params, company]
        if kind is not None:
            sql, params = sql + " AND kind = ?", [*params, kind]
        return [_row(r) for r in await self._db.fetch_all(sql + " ORDER BY id", tuple(params))]

    # --- UPOs -------------------------------------------------------------------------------

    async def save_upo(self, session_id: int, reference: str, xml: bytes, invoice_id: int | None = None) -> Upo:
        """Keep a UPO (idempotent: saving the same UPO again returns the stored one)."""
        digest = base64.b64encode(hashlib.sha256(xml).digest()).decode("ascii")
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO upos (session_id, invoice_id, reference, sha256, xml, saved_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (session_id, invoice_id, reference, digest, xml, db_time(self._now())))
            async with conn.execute(
                    "SELECT * FROM upos WHERE session_id = ? AND COALESCE(invoice_id, 0) = ? AND reference = ?",
                    (session_id, invoice_id or 0, reference)) as cursor:
                row = await cursor.fetchone()
        assert row is not None
        return _upo(row)

    async def save_upos(self, items: Sequence[tuple[int, str, bytes, int | None]]) -> None:
        """Keep many UPOs (session id, reference, xml, invoice id) in one commit; idempotent like `save_upo`."""
        saved_at = db_time(self._now())
        async with self._db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO upos (session_id, invoice_id, reference, sha256, xml, saved_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(session_id, invoice_id, reference, base64.b64encode(hashlib.sha256(xml).digest()).decode("ascii"),
                  xml, saved_at) for session_id, reference, xml, invoice_id in items])

    async def upos(self, session_id: int, *, invoice_id: int | None = None) -> list[Upo]:
        if invoice_id is None:
            rows = await self._db.fetch_all("SELECT * FROM upos WHERE session_id = ? ORDER BY id", (session_id,))
        else:
            rows = await self._db.fetch_all("SELECT * FROM upos WHERE session_id = ? AND invoice_id = ? ORDER BY id",
                                            (session_id, invoice_id))
        return [_upo(r) for r in rows]

    @staticmethod
    async def _get(conn: aiosqlite.Connection, session_id: int) -> SessionRow:
        async with conn.execute("SELECT * FROM ksef_sessions WHERE id = ?", (session_id,)) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return _row(row)


def _upo(r: aiosqlite.Row) -> Upo:
    return Upo(id=r["id"], session_id=r["session_id"], invoice_id=r["invoice_id"], reference=r["reference"],
               sha256=r["sha256"], xml=bytes(r["xml"]), saved_at=required_time(r["saved_at"]))


