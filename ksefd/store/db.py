"""One SQLite file through aiosqlite: WAL, synchronous=FULL, foreign keys, schema by PRAGMA user_version.

synchronous=FULL on every commit: each state transition is persisted before the KSeF call it
announces (DESIGN.md, an invoice's life), so a power cut must not undo it; in WAL mode NORMAL could
lose the last commits. The cost is one fsync per transaction (see benchmarks/store_transitions.py);
group many rows in one transaction (`InvoiceRepo.transition_many`) when that matters.

One connection serves the daemon: aiosqlite runs its statements on one thread in order, and an
asyncio lock keeps a transaction's statements together, so coroutines never interleave inside one.
Other processes (`ksefd status`) may read at the same time thanks to WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .migrations import MIGRATIONS

_T = TypeVar("_T")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"   # fixed width, UTC: text order is time order


class StoreError(Exception):
    pass


class SchemaTooNew(StoreError):
    """The file was written by a newer ksefd; an older one must not guess at its meaning."""


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, private_folder: bool = False) -> Database:
        """Open (creating the file and a missing folder) and migrate. The file holds invoice metadata and
        UPOs, so it is 0600, and so are its -wal and -shm (SQLite gives them the main file's mode).
        A folder ksefd creates is 0700 with `private_folder`, else 0750: by default the database lies in
        data_dir, the parent of the companies' folders, which the ERP (the service's group) must traverse."""
        _prepare_private_file(path, FOLDER_PRIVATE if private_folder else FOLDER_SHARED)
        conn = await aiosqlite.connect(path, isolation_level=None)   # we issue BEGIN/COMMIT ourselves
        try:
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA busy_timeout = 10000")
            mode = await _enter_wal(conn)
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode[0] if mode else None!r}); "
                                 "put the state database on a local disk, not a network share")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await _migrate(conn, path)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path)

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self, *, synced: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (cancellation included).

        `synced=False` commits with synchronous=NORMAL: no fsync, yet in WAL mode the commit survives the
        process being killed (only an OS crash or power loss can undo it). For frequent small records that
        must outlive a kill -9 but not necessarily a power cut (the rate limiter's grants, issue #10)."""
        async with self._lock:
            if not synced:
                await self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):   # SQLite may have rolled back already
                        await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")
            finally:
                if not synced:
                    await self._conn.execute("PRAGMA synchronous = FULL")

    async def write_one(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """One statement that is a whole transaction by itself: SQLite commits it alone (autocommit), as durably
        as `transaction()` (synchronous=FULL), in one round trip to the database thread instead of three (BEGIN
        IMMEDIATE, the statement, COMMIT). A statement that takes the write lock waits for it (busy_timeout)."""
        async with self._lock:
            await self._conn.execute(sql, params)

    async def transact(self, work: Callable[[sqlite3.Connection], _T], *, synced: bool = True) -> _T:
        """`transaction()` in one round trip to the database thread: `work` runs there on the plain sqlite3
        connection between BEGIN IMMEDIATE and COMMIT (rolled back if it raises), with the same `synced`
        meaning. For frequent small transactions (the rate limiter's journal, issue #16): each statement awaited
        on its own costs a hand-off to the thread and back, seven for a grant's commit.

        `work` must not block on anything but SQLite. If the caller is cancelled meanwhile, the transaction
        still ends on the thread (committed or rolled back) before any other statement of this database runs;
        the caller just does not learn which. aiosqlite has no public way to run a function on its thread:
        `_execute` and `_conn` are private, so pyproject.toml keeps aiosqlite below 0.23 (checked on 0.20-0.22)."""
        async with self._lock:
            return await self._conn._execute(_transacted, self._conn._conn, work, synced)  # type: ignore[no-untyped-call, no-any-return]

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self._conn

    async def fetch_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        async with self.read() as conn, conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, params: tuple[Any, ...] = ()) -> aiosqlite.Row | None:
        async with self.read() as conn, conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def user_version(self) -> int:
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row else 0


def _transacted(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T], synced: bool) -> _T:
    """`Database.transact` on the database thread: the statements `transaction()` would send one by one."""
    if not synced:
        conn.execute("PRAGMA synchronous = NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):   # SQLite may have rolled back already
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
    finally:
        if not synced:
            conn.execute("PRAGMA synchronous = FULL")


FILE_MODE = 0o600
FOLDER_PRIVATE = 0o700
FOLDER_SHARED = 0o750


def _prepare_private_file(path: Path, folder_mode: int) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644), narrow an existing one written by
    an earlier ksefd, and create a missing folder with `folder_mode` (issue #15 point 7)."""
    if not path.parent.exists():
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):   # another process made it meanwhile
            path.parent.mkdir(mode=folder_mode)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    if os.name == "nt":
        return
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                os.chmod(name, FILE_MODE)


WAL_ATTEMPTS = 100          # x 0.1 s: as long as the busy_timeout


async def _enter_wal(conn: aiosqlite.Connection) -> Any:
    """Switch to WAL. Changing the journal mode of a new file needs an exclusive lock and SQLite does not
    run the busy handler for it, so a second process opening the same new database at that moment (the
    daemon starting while `ksefd status` looks) gets "database is locked" at once: retry for a while."""
    for attempt in range(WAL_ATTEMPTS):
        try:
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                return await cursor.fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1)
    return None


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Apply each missing migration in its own transaction; the version is read under the write lock,
    so two processes starting at once cannot apply one migration twice."""
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise SchemaTooNew(f"{path} has schema version {version}, newer than this ksefd knows "
                                   f"({len(MIGRATIONS)}); upgrade ksefd or restore a matching database")
            if version == len(MIGRATIONS):
                await conn.execute("COMMIT")
                return
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {version + 1}")
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise


# --- values ----------------------------------------------------------------------------------------

_last_time: tuple[dt.datetime, str] = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), "1970-01-01T00:00:00.000000Z")


def db_time(when: dt.datetime) -> str:
    # The last answer is kept: a group's rows and events are written with one `now` (strftime for each of
    # 10 000 of them was ~4 % of a backlog's CPU). Aware datetimes compare as instants, and the text is UTC.
    global _last_time
    last = _last_time
    if when == last[0] and when.tzinfo is not None:
        return last[1]
    if when.tzinfo is None:
        raise ValueError("the store keeps aware datetimes only (UTC); got a naive one")
    text = when.astimezone(dt.UTC).strftime(_TIME_FORMAT)
    _last_time = (when, text)
    return text


def py_time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    # fromisoformat reads the fixed format db_time writes (the trailing Z is UTC) ~20x faster than strptime,
    # which was ~1 ms of CPU per invoice on the batch path (every row read parses several times)
    return dt.datetime.fromisoformat(text)


def required_time(text: str) -> dt.datetime:
    """A NOT NULL time column."""
    value = py_time(text)
    assert value is not None
    return value


def py_date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text is not None else None


def py_json(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def db_value(value: Any) -> Any:
    """A Python value as SQLite stores it here: times as fixed UTC text, dates ISO, JSON for structures."""
    if isinstance(value, dt.datetime):
        return db_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return value


def assignments(fields: dict[str, Any], allowed: frozenset[str] | set[str], what: str) -> tuple[str, list[Any]]:
    """`, a = ?, b = ?` and its values for an UPDATE of `fields`, refusing names outside `allowed`
    (column names come from code, never from data, but a typo must fail loudly)."""
    unknown = set(fields) - allowed
    if unknown:
        raise StoreError(f"unknown {what} fields: {', '.join(sorted(unknown))}")
    names = sorted(fields)
    return "".join(f", {n} = ?" for n in names), [db_value(fields[n]) for n in names]
