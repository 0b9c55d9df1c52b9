"""Small named values kept across restarts, e.g. (namespace `ratelimit`) the limits KSeF reported per
context and the rate limiter's run marker (store/ratelimits.py; the grants and blocks have their own tables).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from .db import Database, db_time

RATE_LIMITS = "ratelimit"


class KeyValueRepo:
    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._now = now

    async def get(self, namespace: str, key: str) -> str | None:
        row = await self._db.fetch_one("SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
        return str(row[0]) if row else None

    async def put(self, namespace: str, key: str, value: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (namespace, key, value, db_time(self._now())))

    async def delete(self, namespace: str, key: str) -> bool:
        async with self._db.transaction() as conn:
            cursor = await conn.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
            return cursor.rowcount == 1

    async def items(self, namespace: str) -> dict[str, str]:
        rows = await self._db.fetch_all("SELECT key, value FROM kv WHERE namespace = ? ORDER BY key", (namespace,))
        return {str(r[0]): str(r[1]) for r in rows}
