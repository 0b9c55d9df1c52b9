"""Narrow questions the loops ask the store many times a second: answered in SQL, without loading and
parsing every waiting invoice (with a 10 000-invoice batch in flight that parsing dominated the CPU)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from ksefd.store import InvoiceRow, InvoiceState, Store
from ksefd.store.db import db_time, py_time


async def ids_in(store: Store, company: str, states: Iterable[InvoiceState], mode: str | None = None) -> list[int]:
    values = [s.value for s in states]
    sql = f"SELECT id FROM invoices WHERE company = ? AND state IN ({', '.join('?' * len(values))})"
    params: list[object] = [company, *values]
    if mode is not None:
        sql, params = sql + " AND mode = ?", [*params, mode]
    return [int(r[0]) for r in await store.db.fetch_all(sql + " ORDER BY id", tuple(params))]


async def rows(store: Store, ids: Iterable[int]) -> list[InvoiceRow]:
    found = [await store.invoices.get(i) for i in ids]
    return [r for r in found if r is not None]


async def due_count(store: Store, company: str, state: InvoiceState, now: dt.datetime) -> int:
    row = await store.db.fetch_one(
        "SELECT COUNT(*) FROM invoices WHERE company = ? AND state = ? AND (next_attempt_at IS NULL OR "
        "next_attempt_at <= ?)", (company, state.value, db_time(now)))
    return int(row[0]) if row else 0


async def next_attempt(store: Store, company: str) -> dt.datetime | None:
    row = await store.db.fetch_one(
        "SELECT MIN(next_attempt_at) FROM invoices WHERE company = ? AND state IN (?, ?) AND next_attempt_at "
        "IS NOT NULL", (company, InvoiceState.DEFERRED.value, InvoiceState.QUEUED.value))
    return py_time(row[0]) if row and row[0] else None
