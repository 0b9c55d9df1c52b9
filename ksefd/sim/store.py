"""The simulator's state: named tables of JSON records, in memory, optionally written through to SQLite.

With `ksefd sim --state FILE` every `put`/`delete` is committed to SQLite at once, and a restarted
simulator loads everything back (issue #2 item 7). Records are plain JSON-able dicts; a module that
changes a record must `put` it again, which is what makes it durable.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self._tables: dict[str, dict[str, Record]] = {}
        self._blobs: dict[str, bytes] = {}
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if path is not None:
            self._open(path)

    def _open(self, path: Path) -> None:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS records (tbl TEXT, key TEXT, value TEXT, PRIMARY KEY (tbl, key))")
        db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB)")
        for tbl, key, value in db.execute("SELECT tbl, key, value FROM records"):
            self._tables.setdefault(tbl, {})[key] = json.loads(value)
        for key, blob in db.execute("SELECT key, value FROM blobs"):
            self._blobs[key] = bytes(blob)
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # records ---------------------------------------------------------------------------------
    def get(self, table: str, key: str) -> Record | None:
        return self._tables.get(table, {}).get(key)

    def put(self, table: str, key: str, value: Record) -> None:
        self._tables.setdefault(table, {})[key] = value
        if self._db is not None:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                                 (table, key, json.dumps(value, ensure_ascii=False)))

    def delete(self, table: str, key: str) -> None:
        self._tables.get(table, {}).pop(key, None)
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key))

    def items(self, table: str) -> Iterator[tuple[str, Record]]:
        return iter(list(self._tables.get(table, {}).items()))

    def values(self, table: str) -> list[Record]:
        return list(self._tables.get(table, {}).values())

    def count(self, table: str) -> int:
        return len(self._tables.get(table, {}))

    # blobs (invoice bytes, UPOs, packages) ---------------------------------------------------
    def put_blob(self, key: str, data: bytes) -> None:
        self._blobs[key] = data
        if self._db is not None:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (key, data))

    def get_blob(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    def delete_blob(self, key: str) -> None:
        self._blobs.pop(key, None)
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM blobs WHERE key = ?", (key,))
