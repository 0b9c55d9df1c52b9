"""Outbox invoices: rows that move only along INVOICE_TRANSITIONS, each step audited.

`transition(id, from_state, to_state, **fields)` is an UPDATE guarded by `state = from_state`: if
another task moved the invoice first, or the daemon's idea of the state is stale, it raises
`StateConflict` instead of silently overwriting. A step not in the table raises `IllegalTransition`
before touching the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiosqlite

from . import events
from .db import Database, StoreError, assignments, db_time, db_value, py_date, py_json, py_time
from .states import INVOICE_TRANSITIONS, TERMINAL_INVOICE_STATES, InvoiceState

# Columns a caller may set; id, company, state and the timestamps are the repository's.
FIELDS = frozenset({
    "file_name", "work_path", "sha256", "size", "seller_nip", "invoice_type", "invoice_number", "issue_date",
    "has_attachment", "mode", "offline", "offline_deadline", "session_id", "invoice_ref", "ksef_number",
    "status_code", "attempts", "next_attempt_at", "last_error", "result_name",
})


class IllegalTransition(StoreError):
    pass


class StateConflict(StoreError):
    """The row is not in the state the caller expected (or does not exist)."""

    def __init__(self, what: str, row_id: int, expected: Iterable[str], actual: str | None) -> None:
        expected = sorted(str(e) for e in expected)
        super().__init__(f"{what} {row_id} is {actual or 'missing'}, expected {' or '.join(expected)}")
        self.row_id = row_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class InvoiceRow:
    id: int
    company: str
    file_name: str
    work_path: str | None
    sha256: str
    size: int
    seller_nip: str | None
    invoice_type: str | None
    invoice_number: str | None
    issue_date: dt.date | None
    has_attachment: bool
    state: InvoiceState
    mode: str | None
    offline: bool
    offline_deadline: dt.datetime | None
    session_id: int | None
    invoice_ref: str | None
    ksef_number: str | None
    status_code: int | None
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: Any
    result_name: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def duplicate_key(self) -> tuple[str | None, str | None, str | None]:
        return (self.seller_nip, self.invoice_type, self.invoice_number)


@dataclass(frozen=True)
class NewInvoice:
    """A claimed file for `InvoiceRepo.add_many` (fields as for `add`)."""

    file_name: str
    sha256: str
    size: int
    detail: Any = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One invoice's step for `InvoiceRepo.transition_each`: its own fields and audit detail."""

    invoice_id: int
    fields: dict[str, Any] = field(default_factory=dict)
    detail: Any = None


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(InvoiceRow))


def _row(r: aiosqlite.Row) -> InvoiceRow:
    created, updated = py_time(r["created_at"]), py_time(r["updated_at"])
    assert created is not None and updated is not None
    return InvoiceRow(
        id=r["id"], company=r["company"], file_name=r["file_name"], work_path=r["work_path"], sha256=r["sha256"],
        size=r["size"], seller_nip=r["seller_nip"], invoice_type=r["invoice_type"],
        invoice_number=r["invoice_number"], issue_date=py_date(r["issue_date"]),
        has_attachment=bool(r["has_attachment"]), state=InvoiceState(r["state"]), mode=r["mode"],
        offline=bool(r["offline"]), offline_deadline=py_time(r["offline_deadline"]), session_id=r["session_id"],
        invoice_ref=r["invoice_ref"], ksef_number=r["ksef_number"], status_code=r["status_code"],
        attempts=r["attempts"], next_attempt_at=py_time(r["next_attempt_at"]), last_error=py_json(r["last_error"]),
        result_name=r["result_name"], created_at=created, updated_at=updated)




def _check_known(rows: Sequence[InvoiceRow] | None, ids: Sequence[int], state: InvoiceState | None) -> None:
    if rows is not None and ([r.id for r in rows] != list(ids) or any(r.state != state for r in rows)):
        raise StoreError("the rows given are not the invoices moved, in their order and state")


def _read_back(value: Any) -> Any:
    """A value as `_row` reads it back after it was written (db_value)."""
    if isinstance(value, dt.datetime):
        return py_time(db_time(value))
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping | list | tuple):
        return py_json(db_value(value))
    return value


def _as_written(rows: Sequence[InvoiceRow], state: InvoiceState, now: dt.datetime,
                fields: Sequence[dict[str, Any]]) -> list[InvoiceRow]:
    """`rows` after an UPDATE to `state` at `now`, each with its `fields` (one dict for all, or one each), as a
    read of them would give them."""
    updated = dt.datetime.fromisoformat(db_time(now))
    if len(fields) == 1:
        read = {name: _read_back(value) for name, value in fields[0].items()}
        read.update(state=state, updated_at=updated)
        return [_changed(row, read) for row in rows]
    return [_changed(row, {"state": state, "updated_at": updated,
                           **{name: _read_back(value) for name, value in one.items()}})
            for row, one in zip(rows, fields, strict=True)]


def _changed(row: InvoiceRow, changes: dict[str, Any]) -> InvoiceRow:
    """`dataclasses.replace(row, **changes)` for names known to be fields, without its __init__ call (5 us a
    row; a backlog invoice is moved about six times, issue #16): a copy of the row's attributes, changed."""
    if not _FIELD_NAMES.issuperset(changes):
        raise TypeError(f"not fields of InvoiceRow: {sorted(set(changes) - _FIELD_NAMES)}")
    new = object.__new__(InvoiceRow)
    attributes = new.__dict__
    attributes.update(row.__dict__)
    attributes.update(changes)
    return new


# One company's invoices in one state whose next attempt is due (company, state, now): the dispatcher's looks.
_DUE = "company = ? AND state = ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"


class InvoiceRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def add(self, company: str, file_name: str, sha256: str, size: int, *,
                  detail: Any = None, **fields: Any) -> InvoiceRow:
        """A claimed file: the row starts in CLAIMED."""
        async with self._db.transaction() as conn:
            invoice_id = await self._insert(conn, company, file_name, sha256, size, detail, fields)
            return await self._get(conn, invoice_id)

    async def add_many(self, company: str, items: Sequence[NewInvoice]) -> list[InvoiceRow]:
        """Many claimed files in one commit (a large drop), in the order given; all or nothing. A few statements
        whatever the number of files: inside BEGIN IMMEDIATE nobody else writes, so an INTEGER PRIMARY KEY
        gives the rows of one executemany the ids after the largest, in the order inserted."""
        if not items:
            return []
        now = self._now()
        ids: list[int] = []
        async with self._db.transaction() as conn:
            start = 0
            while start < len(items):        # runs of items that set the same columns share one statement
                names = sorted(items[start].fields)
                end = start + 1
                while end < len(items) and sorted(items[end].fields) == names:
                    end += 1
                ids += await self._insert_run(conn, company, items[start:end], names, now)
                start = end
            await events.record_many(conn, [
                dict(at=now, kind="invoice", company=company, invoice_id=invoice_id, to_state=InvoiceState.CLAIMED,
                     detail=item.detail or {"file": item.file_name})
                for invoice_id, item in zip(ids, items, strict=True)])
            return await self._get_many(conn, ids)

    async def _insert_run(self, conn: aiosqlite.Connection, company: str, items: Sequence[NewInvoice],
                          names: list[str], now: dt.datetime) -> list[int]:
        async with conn.execute("SELECT COALESCE(MAX(id), 0) FROM invoices") as cursor:
            found = await cursor.fetchone()
        before = int(found[0]) if found else 0
        columns = "".join(f", {n}" for n in names)
        at = db_time(now)
        rows = []
        for item in items:
            _, values = assignments(item.fields, FIELDS, "invoice")
            rows.append((company, item.file_name, item.sha256, item.size, InvoiceState.CLAIMED.value, at, at, *values))
        await conn.executemany(
            f"INSERT INTO invoices (company, file_name, sha256, size, state, created_at, updated_at{columns}) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?{', ?' * len(names)})", rows)
        async with conn.execute("SELECT id FROM invoices WHERE id > ? ORDER BY id", (before,)) as cursor:
            ids = [int(r[0]) for r in await cursor.fetchall()]
        if len(ids) != len(items):
            raise StoreError(f"add_many: {len(items)} rows inserted, {len(ids)} found after them")
        return ids

    async def _insert(self, conn: aiosqlite.Connection, company: str, file_name: str, sha256: str, size: int,
                      detail: Any, fields: dict[str, Any]) -> int:
        _, values = assignments(fields, FIELDS, "invoice")
        now = db_time(self._now())
        names = sorted(fields)
        columns = "".join(f", {n}" for n in names)
        cursor = await conn.execute(
            f"INSERT INTO invoices (company, file_name, sha256, size, state, created_at, updated_at{columns}) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?{', ?' * len(names)})",
            (company, file_name, sha256, size, InvoiceState.CLAIMED.value, now, now, *values))
        invoice_id = cursor.lastrowid
        assert invoice_id is not None
        await events.record(conn, at=self._now(), kind="invoice", company=company, invoice_id=invoice_id,
                            to_state=InvoiceState.CLAIMED, detail=detail or {"file": file_name})
        return invoice_id

    async def transition(self, invoice_id: int, from_state: InvoiceState, to_state: InvoiceState, *,
                         detail: Any = None, **fields: Any) -> InvoiceRow:
        """Move one invoice a step along the state machine, setting `fields` in the same transaction."""
        rows = await self.transition_many([invoice_id], from_state, to_state, detail=detail, **fields)
        return rows[0]

    async def transition_many(self, invoice_ids: Sequence[int], from_state: InvoiceState, to_state: InvoiceState,
                              *, detail: Any = None, **fields: Any) -> list[InvoiceRow]:
        """All or nothing: e.g. every invoice of a batch to SUBMITTING with its session, in one commit
        (a few statements whatever the number of invoices)."""
        return await self.transition_steps(invoice_ids, [from_state, to_state], detail=detail, **fields)

    async def transition_steps(self, invoice_ids: Sequence[int], states: Sequence[InvoiceState], *,
                               detail: Any = None, known: Sequence[InvoiceRow] | None = None,
                               **fields: Any) -> list[InvoiceRow]:
        """Along `states` (e.g. ACCEPTED -> UPO_SAVED -> DONE) in ONE commit: each step checked and audited as
        `transition_many` does it, `fields` set with the last; one fsync of the WAL instead of one per step.
        A crash leaves the invoices in the first state, as if nothing had been done.

        `known`: the invoices as the caller has them (same order, in the first state, no other writer since):
        the answer is built from them and what was written instead of read back (issue #16: reading every
        row back after each step was ~5 % of a backlog's CPU)."""
        _check_known(known, invoice_ids, states[0] if states else None)
        steps = list(itertools.pairwise(states))
        if not steps:
            raise StoreError("transition_steps: at least two states")
        for from_state, to_state in steps:
            if to_state not in INVOICE_TRANSITIONS[from_state]:
                raise IllegalTransition(f"an invoice cannot go from {from_state} to {to_state}")
        if len(set(invoice_ids)) != len(invoice_ids):
            raise StoreError("transition_many: an invoice id is listed twice")
        now = self._now()
        async with self._db.transaction() as conn:
            for number, (from_state, to_state) in enumerate(steps):
                last = number == len(steps) - 1
                sets, values = assignments(fields if last else {}, FIELDS, "invoice")
                at = db_time(now)
                cursor = await conn.executemany(
                    f"UPDATE invoices SET state = ?, updated_at = ?{sets} WHERE id = ? AND state = ?",
                    [(to_state.value, at, *values, i, from_state.value) for i in invoice_ids])
                if cursor.rowcount != len(invoice_ids):
                    for invoice_id in invoice_ids:   # name the first one that was not where the caller thought
                        actual = await self._state(conn, invoice_id)
                        if actual != to_state.value:
                            raise StateConflict("invoice", invoice_id, [from_state], actual)
                    raise StateConflict("invoice", invoice_ids[0], [from_state], to_state.value)
                if last:
                    rows = (await self._get_many(conn, invoice_ids) if known is None
                            else _as_written(known, to_state, now, [fields]))
                    sessions = {r.id: r.session_id for r in rows}
                    companies = {r.id: r.company for r in rows}
            events_rows = [
                dict(at=now, kind="invoice", company=companies[i], invoice_id=i, session_id=sessions[i],
                     from_state=from_state, to_state=to_state, detail=detail)
                for from_state, to_state in steps for i in invoice_ids]
            await events.record_many(conn, events_rows)
        return rows

    async def transition_each(self, changes: Sequence[Change], from_state: InvoiceState,
                              to_state: InvoiceState, *, known: Sequence[InvoiceRow] | None = None
                              ) -> list[InvoiceRow]:
        """Like `transition_many`, but each invoice with its own fields and audit detail (e.g. every
        accepted invoice of a batch with its KSeF number): all or nothing, one commit. `known`: as for
        `transition_steps`."""
        return (await self.transition_groups([(changes, from_state, to_state, known)]))[0]

    async def transition_groups(self, groups: Sequence[tuple[Sequence[Change], InvoiceState, InvoiceState,
                                                            Sequence[InvoiceRow] | None]]) -> list[list[InvoiceRow]]:
        """Several `transition_each` groups, each with its own step (changes, from, to, known), all or nothing
        in ONE commit (issue #16: concurrent online sends' intents and answers share a commit, grouped.py)."""
        ids = [c.invoice_id for changes, *_ in groups for c in changes]
        if len(set(ids)) != len(ids):
            raise StoreError("transition_each: an invoice id is listed twice")
        for changes, from_state, to_state, known in groups:
            if to_state not in INVOICE_TRANSITIONS[from_state]:
                raise IllegalTransition(f"an invoice cannot go from {from_state} to {to_state}")
            _check_known(known, [c.invoice_id for c in changes], from_state)
        now = self._now()
        at = db_time(now)
        answer: list[list[InvoiceRow]] = []
        audit: list[dict[str, Any]] = []
        async with self._db.transaction() as conn:
            for changes, from_state, to_state, known in groups:
                statements: dict[str, list[tuple[Any, ...]]] = {}     # one executemany per set of columns changed
                for change in changes:
                    sets, values = assignments(change.fields, FIELDS, "invoice")
                    statements.setdefault(sets, []).append((to_state.value, at, *values, change.invoice_id,
                                                            from_state.value))
                for sets, params in statements.items():
                    cursor = await conn.executemany(
                        f"UPDATE invoices SET state = ?, updated_at = ?{sets} WHERE id = ? AND state = ?", params)
                    if cursor.rowcount != len(params):
                        for *_, invoice_id, _ in params:   # name the first one that was not where the caller thought
                            actual = await self._state(conn, invoice_id)
                            if actual != to_state.value:
                                raise StateConflict("invoice", invoice_id, [from_state], actual)
                        raise StateConflict("invoice", params[0][-2], [from_state], to_state.value)
                if known is None:
                    rows = await self._get_many(conn, [c.invoice_id for c in changes])
                else:
                    rows = _as_written(known, to_state, now, [c.fields for c in changes])
                answer.append(rows)
                audit.extend(dict(at=now, kind="invoice", company=r.company, invoice_id=r.id, session_id=r.session_id,
                                  from_state=from_state, to_state=to_state, detail=c.detail)
                             for r, c in zip(rows, changes, strict=True))
            await events.record_many(conn, audit)
        return answer

    async def update(self, invoice_id: int, state: InvoiceState, *, detail: Any = None,
                     **fields: Any) -> InvoiceRow:
        """Change fields without changing state (e.g. the next poll time of an in-doubt invoice),
        guarded by the state the caller believes the invoice is in. `detail` adds an audit event."""
        sets, values = assignments(fields, FIELDS, "invoice")
        now = self._now()
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                f"UPDATE invoices SET updated_at = ?{sets} WHERE id = ? AND state = ?",
                (db_time(now), *values, invoice_id, state.value))
            if cursor.rowcount != 1:
                raise StateConflict("invoice", invoice_id, [state], await self._state(conn, invoice_id))
            row = await self._get(conn, invoice_id)
            if detail is not None:
                await events.record(conn, at=now, kind="invoice", company=row.company, invoice_id=invoice_id,
                                    session_id=row.session_id, from_state=state, to_state=state, detail=detail)
            return row

    # --- queries ------------------------------------------------------------------------------

    async def get(self, invoice_id: int) -> InvoiceRow | None:
        row = await self._db.fetch_one("SELECT * FROM invoices WHERE id = ?", (invoice_id,))
        return _row(row) if row else None

    async def find_by_hash(self, company: str, sha256: str) -> list[InvoiceRow]:
        """Earlier invoices with these exact bytes: the same file dropped again (issue #5 item 2)."""
        return await self._select("WHERE company = ? AND sha256 = ? ORDER BY id", (company, sha256))

    async def find_by_hashes(self, company: str, hashes: Iterable[str]) -> dict[str, list[InvoiceRow]]:
        """`find_by_hash` for many (a drop of many files): hash -> its invoices, oldest first; a few queries."""
        wanted = sorted(set(hashes))
        found: dict[str, list[InvoiceRow]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for row in await self._select(f"WHERE company = ? AND sha256 IN ({', '.join('?' * len(chunk))}) "
                                          "ORDER BY id", (company, *chunk)):
                found.setdefault(row.sha256, []).append(row)
        return found

    async def find_by_keys(self, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[InvoiceRow]]:
        """`find_by_key` for many: (seller NIP, type, number) -> its invoices, oldest first; a few queries."""
        numbers: dict[tuple[str, str], list[str]] = {}
        for nip, kind, number in sorted(set(keys)):
            numbers.setdefault((nip, kind), []).append(number)
        found: dict[tuple[str, str, str], list[InvoiceRow]] = {}
        for (nip, kind), wanted in numbers.items():     # the index (seller_nip, invoice_type, invoice_number)
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for row in await self._select(f"WHERE seller_nip = ? AND invoice_type = ? AND invoice_number IN "
                                              f"({', '.join('?' * len(chunk))}) ORDER BY id", (nip, kind, *chunk)):
                    assert row.invoice_number is not None
                    found.setdefault((nip, kind, row.invoice_number), []).append(row)
        return found

    async def find_by_key(self, seller_nip: str, invoice_type: str, invoice_number: str) -> list[InvoiceRow]:
        """Invoices with KSeF's duplicate key (PROTOCOL.md §4.2), any company."""
        return await self._select("WHERE seller_nip = ? AND invoice_type = ? AND invoice_number = ? ORDER BY id",
                                  (seller_nip, invoice_type, invoice_number))

    async def find_by_ksef_number(self, ksef_number: str) -> list[InvoiceRow]:
        return await self._select("WHERE ksef_number = ? ORDER BY id", (ksef_number,))

    async def in_state(self, company: str | None, *states: InvoiceState, limit: int = 100_000) -> list[InvoiceRow]:
        marks = ", ".join("?" * len(states))
        if company is None:
            return await self._select(f"WHERE state IN ({marks}) ORDER BY id LIMIT ?",
                                      (*[s.value for s in states], limit))
        return await self._select(f"WHERE company = ? AND state IN ({marks}) ORDER BY id LIMIT ?",
                                  (company, *[s.value for s in states], limit))

    async def due(self, company: str, states: Iterable[InvoiceState], now: dt.datetime,
                  limit: int = 10_000) -> list[InvoiceRow]:
        """Invoices in `states` whose next_attempt_at is unset or has passed, oldest first."""
        values = [s.value for s in states]
        marks = ", ".join("?" * len(values))
        return await self._select(
            f"WHERE company = ? AND state IN ({marks}) AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "ORDER BY id LIMIT ?", (company, *values, db_time(now), limit))

    # Narrow questions the outbox loops ask many times a second: answered in SQL, without loading and parsing
    # every waiting invoice (with a 10 000-invoice batch in flight that parsing dominated the CPU).

    async def ids_in(self, company: str, states: Iterable[InvoiceState], mode: str | None = None) -> list[int]:
        values = [s.value for s in states]
        sql = f"SELECT id FROM invoices WHERE company = ? AND state IN ({', '.join('?' * len(values))})"
        params: list[object] = [company, *values]
        if mode is not None:
            sql, params = sql + " AND mode = ?", [*params, mode]
        return [int(r[0]) for r in await self._db.fetch_all(sql + " ORDER BY id", tuple(params))]

    async def get_many(self, invoice_ids: Iterable[int]) -> list[InvoiceRow]:
        """The rows of `invoice_ids` that exist, in the order given."""
        ids = list(invoice_ids)
        async with self._db.read() as conn:
            found = await self._get_many(conn, ids, missing_ok=True)
        return found

    async def still_in(self, invoice_ids: Sequence[int], state: InvoiceState) -> list[InvoiceRow]:
        """The rows of `invoice_ids` still in `state`, in the order given (the dispatcher's pieces, `due_kinds`)."""
        async with self._db.read() as conn:
            found = await self._get_many(conn, invoice_ids, missing_ok=True)
        return [r for r in found if r.state is state]

    async def due_ids(self, company: str, state: InvoiceState, now: dt.datetime) -> list[int]:
        """The ids of `due` (one state), oldest first: the dispatcher's look, without loading rows."""
        return [int(r[0]) for r in await self._db.fetch_all(
            f"SELECT id FROM invoices WHERE {_DUE} ORDER BY id", (company, state.value, db_time(now)))]

    async def due_kinds(self, company: str, state: InvoiceState, now: dt.datetime) -> list[tuple[int, bool]]:
        """(id, has_attachment) of `due` (one state), oldest first: enough to cut a backlog into batch pieces
        and online sends, whose rows are then loaded piece by piece (`get_many`), not all 10 000 at once
        (issue #16: the dispatcher's full load was ~8 MB of rows and tuples at the 10 000 backlog's peak)."""
        return [(int(r[0]), bool(r[1])) for r in await self._db.fetch_all(
            f"SELECT id, has_attachment FROM invoices WHERE {_DUE} ORDER BY id", (company, state.value, db_time(now)))]

    async def due_count(self, company: str, state: InvoiceState, now: dt.datetime) -> int:
        row = await self._db.fetch_one(
            f"SELECT COUNT(*) FROM invoices WHERE {_DUE}", (company, state.value, db_time(now)))
        return int(row[0]) if row else 0

    async def next_attempt_at(self, company: str) -> dt.datetime | None:
        """The soonest retry time of the company's DEFERRED, QUEUED or OFFLINE invoices (an offline invoice KSeF
        cancelled with 405/550 waits for its retry in OFFLINE)."""
        row = await self._db.fetch_one(
            "SELECT MIN(next_attempt_at) FROM invoices WHERE company = ? AND state IN (?, ?, ?) AND next_attempt_at "
            "IS NOT NULL", (company, InvoiceState.DEFERRED.value, InvoiceState.QUEUED.value,
                            InvoiceState.OFFLINE.value))
        return py_time(row[0]) if row and row[0] else None

    async def work_paths(self, company: str) -> dict[str, InvoiceState]:
        """Working file path -> state, for every invoice of `company` that names one (orphan adoption)."""
        rows = await self._db.fetch_all(
            "SELECT work_path, state FROM invoices WHERE company = ? AND work_path IS NOT NULL", (company,))
        return {str(r[0]): InvoiceState(r[1]) for r in rows}

    async def latest_error(self, company: str) -> tuple[InvoiceRow, Any] | None:
        """The company's most recently updated invoice that carries an error, with that error."""
        rows = await self._select("WHERE company = ? AND last_error IS NOT NULL ORDER BY updated_at DESC, id DESC "
                                  "LIMIT 1", (company,))
        return (rows[0], rows[0].last_error) if rows else None

    async def changes(self) -> list[tuple[str, InvoiceState, str | None]]:
        """(file name, state, KSeF number) of every invoice, oldest first (`ksefd demo`'s live lines)."""
        rows = await self._db.fetch_all("SELECT file_name, state, ksef_number FROM invoices ORDER BY id")
        return [(str(r[0]), InvoiceState(r[1]), r[2]) for r in rows]

    async def in_session(self, session_id: int) -> list[InvoiceRow]:
        return await self._select("WHERE session_id = ? ORDER BY id", (session_id,))

    async def ids_in_session(self, session_id: int, states: Iterable[InvoiceState]) -> list[int]:
        """The ids of a session's invoices in `states` (a large batch's rows are read a page at a time)."""
        values = [s.value for s in states]
        return [int(r[0]) for r in await self._db.fetch_all(
            f"SELECT id FROM invoices WHERE session_id = ? AND state IN ({', '.join('?' * len(values))}) ORDER BY id",
            (session_id, *values))]

    async def count_in_session(self, session_id: int) -> int:
        row = await self._db.fetch_one("SELECT COUNT(*) FROM invoices WHERE session_id = ?", (session_id,))
        return int(row[0]) if row else 0

    async def counts(self, company: str) -> dict[InvoiceState, int]:
        rows = await self._db.fetch_all(
            "SELECT state, COUNT(*) FROM invoices WHERE company = ? GROUP BY state", (company,))
        return {InvoiceState(r[0]): int(r[1]) for r in rows}

    async def oldest_waiting(self, company: str) -> InvoiceRow | None:
        """The oldest invoice not yet finished (for `ksefd status`)."""
        marks = ", ".join("?" * len(TERMINAL_INVOICE_STATES))
        rows = await self._select(f"WHERE company = ? AND state NOT IN ({marks}) ORDER BY created_at, id LIMIT 1",
                                  (company, *[s.value for s in TERMINAL_INVOICE_STATES]))
        return rows[0] if rows else None

    async def _select(self, where: str, params: tuple[Any, ...]) -> list[InvoiceRow]:
        return [_row(r) for r in await self._db.fetch_all(f"SELECT * FROM invoices {where}", params)]

    @staticmethod
    async def _get(conn: aiosqlite.Connection, invoice_id: int) -> InvoiceRow:
        async with conn.execute("SELECT * FROM invoices WHERE id = ?", (invoice_id,)) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return _row(row)

    @staticmethod
    async def _get_many(conn: aiosqlite.Connection, invoice_ids: Sequence[int], *,
                        missing_ok: bool = False) -> list[InvoiceRow]:
        found: dict[int, InvoiceRow] = {}
        for start in range(0, len(invoice_ids), 500):
            chunk = invoice_ids[start:start + 500]
            async with conn.execute(f"SELECT * FROM invoices WHERE id IN ({', '.join('?' * len(chunk))})",
                                    tuple(chunk)) as cursor:
                found.update((r["id"], _row(r)) for r in await cursor.fetchall())
        if missing_ok:
            return [found[i] for i in invoice_ids if i in found]
        return [found[i] for i in invoice_ids]

    @staticmethod
    async def _state(conn: aiosqlite.Connection, invoice_id: int) -> str | None:
        async with conn.execute("SELECT state FROM invoices WHERE id = ?", (invoice_id,)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else None
