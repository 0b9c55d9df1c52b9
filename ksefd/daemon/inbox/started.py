"""Exports started and not yet delivered, kept in the state database (kv namespace `inbox_exports`; issue #16).

Why: a backfill exports package after package (PROTOCOL.md §6.4 step 3: each window starts where the last
package ended), and KSeF needs a second or two to build each one. The next package's window is known as soon
as the current package is downloaded, so its export is started then, and KSeF builds it while this process
writes the current one into the inbox (`sync.export_package`, `prestart`).

Exports are 20 an hour (§6.4), so a started export must not be lost with the process: every export is
recorded here (reference number, AES key, filters) as soon as KSeF answers its POST, and the record goes only
once its package is delivered, or when the export can no longer be used (failed, expired, or for a window the
checkpoint has already passed). A process killed at any moment restarts, finds the record of its checkpoint's
window and downloads that export instead of spending another; only a kill between KSeF's answer and the
record's commit loses one, as it always could.

The record holds the export's AES key: it decrypts nothing but the package, whose invoices this process
writes in plain text into the inbox anyway; it stays in ksefd's own state database and is never logged.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from ksefd.ksef import StartedExport, parse_instant
from ksefd.store import KeyValueRepo

log = structlog.get_logger("ksefd.daemon.inbox")

NAMESPACE = "inbox_exports"


class StartedExports:
    """The recorded exports of one company (one per subject type and window start)."""

    def __init__(self, kv: KeyValueRepo, company: str) -> None:
        self.kv = kv
        self.company = company

    def _key(self, subject_type: str, filters: dict[str, Any]) -> str:
        return f"{self.company}|{subject_type}|{filters['dateRange']['from']}"

    async def keep(self, subject_type: str, started: StartedExport) -> None:
        await self.kv.put(NAMESPACE, self._key(subject_type, started.filters), json.dumps(started.to_record()))

    async def drop(self, subject_type: str, started: StartedExport) -> None:
        await self.kv.delete(NAMESPACE, self._key(subject_type, started.filters))

    async def find(self, subject_type: str, filters: dict[str, Any]) -> StartedExport | None:
        """The recorded export of exactly `filters`, if any. Records of this subject type for windows that
        start before `filters` are stale (the checkpoint passed them) and are removed; later ones are kept
        (a pre-started next package, still good if this window is being exported again after a failure)."""
        prefix = f"{self.company}|{subject_type}|"
        start = parse_instant(str(filters["dateRange"]["from"]))
        found = None
        for key, value in (await self.kv.items(NAMESPACE)).items():
            if not key.startswith(prefix):
                continue
            try:
                started = StartedExport.from_record(json.loads(value))
                stale = started.filters != filters and parse_instant(key[len(prefix):]) <= start
            except (ValueError, KeyError, TypeError):
                started, stale = None, True
            if started is not None and started.filters == filters:
                found = started
            elif stale:
                await self.kv.delete(NAMESPACE, key)
        return found

    async def has(self, subject_type: str, filters: dict[str, Any]) -> bool:
        return await self.kv.get(NAMESPACE, self._key(subject_type, filters)) is not None
