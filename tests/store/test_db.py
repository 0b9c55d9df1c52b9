"""The SQLite file itself: creation, pragmas, migrations, reopening, transactions."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.store import MIGRATIONS, SchemaTooNew, Store
from ksefd.store.db import Database, db_time, py_time

TABLES = {"invoices", "ksef_sessions", "upos", "events", "kv", "inbox_checkpoints", "inbox_delivered",
          "company_holds", "heartbeat"}


def make_empty_file(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_creates_file_folder_and_schema(db_path: Path, clock: ManualClock) -> None:
    assert not db_path.parent.exists()
    store = await Store.open(db_path, clock)
    try:
        assert await store.db.user_version() == len(MIGRATIONS)
        async with store.db.read() as conn:
            async with conn.execute("PRAGMA journal_mode") as c:
                assert (await c.fetchone())[0] == "wal"  # type: ignore[index]
            async with conn.execute("PRAGMA synchronous") as c:
                assert (await c.fetchone())[0] == 2  # type: ignore[index]  # FULL
            async with conn.execute("PRAGMA foreign_keys") as c:
                assert (await c.fetchone())[0] == 1  # type: ignore[index]
    finally:
        await store.close()
    assert tables(db_path) >= TABLES


async def test_migrates_an_empty_file(db_path: Path, clock: ManualClock) -> None:
    make_empty_file(db_path)
    async with await Store.open(db_path, clock) as store:
        assert await store.db.user_version() == len(MIGRATIONS)
    assert tables(db_path) >= TABLES


async def test_reopening_keeps_data_and_does_not_migrate_again(db_path: Path, clock: ManualClock) -> None:
    async with await Store.open(db_path, clock) as store:
        row = await store.invoices.add("acme", "FV.xml", "a" * 44, 10)
        await store.kv.put("ratelimit", "snapshot", '{"v":1}')
    async with await Store.open(db_path, clock) as store:
        again = await store.invoices.get(row.id)
        assert again == row
        assert await store.kv.get("ratelimit", "snapshot") == '{"v":1}'
        assert await store.db.user_version() == len(MIGRATIONS)


async def test_a_newer_schema_is_refused(db_path: Path, clock: ManualClock) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew, match="upgrade ksefd"):
        await Store.open(db_path, clock)


async def test_a_failed_migration_leaves_the_file_untouched(db_path: Path, clock: ManualClock) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE invoices (x INTEGER)")   # a clash the first migration cannot get past
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(db_path, clock)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert tables(db_path) == {"invoices"}


async def test_two_openers_at_once(db_path: Path, clock: ManualClock) -> None:
    first, second = await asyncio.gather(Store.open(db_path, clock), Store.open(db_path, clock))
    try:
        assert await first.db.user_version() == await second.db.user_version() == len(MIGRATIONS)
        added = await first.invoices.add("acme", "FV.xml", "h" * 44, 1)
        assert await second.invoices.get(added.id) == added       # WAL: the other connection sees the commit
    finally:
        await first.close()
        await second.close()


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.db.transaction() as conn:
            await conn.execute("INSERT INTO kv (namespace, key, value, updated_at) VALUES ('a', 'b', 'c', 'd')")
            raise RuntimeError("boom")
    assert await store.kv.get("a", "b") is None
    await store.kv.put("a", "b", "ok")                            # the connection is usable afterwards
    assert await store.kv.get("a", "b") == "ok"


async def test_concurrent_transactions_do_not_interleave(store: Store) -> None:
    async def writer(n: int) -> None:
        async with store.db.transaction() as conn:
            await conn.execute("INSERT INTO kv (namespace, key, value, updated_at) VALUES ('n', ?, 'x', 't')",
                               (str(n),))
            await asyncio.sleep(0)
            if n % 2:
                raise ValueError(n)

    results = await asyncio.gather(*(writer(n) for n in range(20)), return_exceptions=True)
    assert sum(isinstance(r, ValueError) for r in results) == 10
    assert sorted(await store.kv.items("n")) == sorted(str(n) for n in range(0, 20, 2))


def test_time_format_orders_as_text() -> None:
    early = dt.datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=dt.UTC)
    late = dt.datetime(2026, 1, 2, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))   # 23:00 UTC on 1 Jan
    assert db_time(late) < db_time(early)
    assert py_time(db_time(early)) == early
    with pytest.raises(ValueError):
        db_time(dt.datetime(2026, 1, 1))


async def test_database_can_be_used_directly(db_path: Path) -> None:
    db = await Database.open(db_path)
    try:
        assert await db.fetch_one("SELECT COUNT(*) FROM invoices") is not None
    finally:
        await db.close()


async def test_many_openers_of_a_new_file_never_see_database_is_locked(tmp_path: Path, clock: ManualClock) -> None:
    # The daemon starting while `ksefd status` (or a test) opens the same new database: switching a new
    # file to WAL takes an exclusive lock that SQLite's busy handler does not wait for.
    for round_ in range(15):
        path = tmp_path / f"race-{round_}.sqlite3"
        stores = await asyncio.gather(*(Store.open(path, clock) for _ in range(6)))
        for store in stores:
            assert await store.db.user_version() == len(MIGRATIONS)
            await store.close()
