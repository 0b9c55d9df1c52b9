"""The simulator's invoice records and their in-memory index (PROTOCOL.md §4.2, §4.5, §6): the store table,
the status texts and every lookup (by reference, KSeF number, session, hash; accepted ones; pending counts).

The record layout is described in invoices.py, which runs the processing pipeline. This module sits below
both invoices.py and sessions.py, so a session can count and list its invoices without importing the
pipeline that in turn finishes sessions (no import cycle, checked by tests/test_import_cycles.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .clock import parse_iso
from .world import World

TABLE = "invoices"
STATUS = {100: "Faktura przyjęta do dalszego przetwarzania", 150: "Trwa przetwarzanie", 200: "Sukces",
          405: "Przetwarzanie anulowane z powodu błędu sesji", 410: "Nieprawidłowy zakres uprawnień",
          415: "Brak możliwości wysyłania faktury z załącznikiem", 430: "Błąd weryfikacji pliku faktury",
          435: "Błąd odszyfrowania pliku", 440: "Duplikat faktury",
          450: "Błąd weryfikacji semantyki dokumentu faktury",
          550: "Operacja została anulowana przez system"}
PENDING = (100, 150)


def status(code: int, details: list[str] | None = None, extensions: dict[str, str] | None = None) -> dict[str, Any]:
    return {"code": code, "description": STATUS.get(code, f"Nieznany błąd ({code})"),
            "details": details or None, "extensions": extensions}


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


# in-memory index over the store ---------------------------------------------------------------

@dataclass
class Index:
    by_session: dict[str, list[str]] = field(default_factory=dict)
    by_ksef: dict[str, str] = field(default_factory=dict)
    by_hash: dict[str, list[str]] = field(default_factory=dict)
    accepted: dict[tuple[str, str, str], str] = field(default_factory=dict)   # duplicate key -> ref
    pending: dict[str, int] = field(default_factory=dict)
    queue: deque[tuple[str, float]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    inspected: dict[str, Any] = field(default_factory=dict)    # ref -> invoices._inspect's answer, judged next
    last_storage: dt.datetime = field(default_factory=lambda: dt.datetime.min.replace(tzinfo=dt.UTC))

    def add(self, rec: dict[str, Any]) -> None:
        ref = rec["referenceNumber"]
        self.by_session.setdefault(rec["sessionReferenceNumber"], []).append(ref)
        self.by_hash.setdefault(rec["invoiceHash"], []).append(ref)
        if rec["status"]["code"] in PENDING:
            self.pending[rec["sessionReferenceNumber"]] = self.pending.get(rec["sessionReferenceNumber"], 0) + 1
        elif rec["status"]["code"] == 200:
            self.mark_accepted(rec)

    def mark_accepted(self, rec: dict[str, Any]) -> None:
        self.by_ksef[rec["ksefNumber"]] = rec["referenceNumber"]
        self.accepted.setdefault(duplicate_key(rec["facts"]), rec["referenceNumber"])
        self.last_storage = max(self.last_storage, parse_iso(rec["permanentStorageDate"]))


def duplicate_key(facts: dict[str, Any]) -> tuple[str, str, str]:
    """(Podmiot1 NIP, RodzajFaktury, P_2): global, not the file hash (PROTOCOL.md §4.2)."""
    return (facts["sellerNip"], facts["rodzajFaktury"], facts["invoiceNumber"])


def index(world: World) -> Index:
    found: Index | None = world.services.get("invoices")
    if found is None:
        found = Index()
        records = sorted(world.store.values(TABLE), key=lambda r: (r["sessionReferenceNumber"], r["ordinalNumber"]))
        for rec in sorted(records, key=lambda r: r.get("acquisitionDate") or "~"):
            found.add(rec)
        world.services["invoices"] = found
    return found


# lookups ----------------------------------------------------------------------------------------

def get(world: World, reference: str) -> dict[str, Any] | None:
    return world.store.get(TABLE, reference)


def by_ksef_number(world: World, ksef_number: str) -> dict[str, Any] | None:
    ref = index(world).by_ksef.get(ksef_number)
    return get(world, ref) if ref else None


def for_session(world: World, session_reference: str) -> list[dict[str, Any]]:
    """Every invoice of the session, in ordinal order."""
    refs = index(world).by_session.get(session_reference, [])
    records = [r for r in (get(world, ref) for ref in refs) if r is not None]
    return sorted(records, key=lambda r: r["ordinalNumber"])


def by_hash(world: World, invoice_hash: str) -> list[dict[str, Any]]:
    return [r for r in (get(world, ref) for ref in index(world).by_hash.get(invoice_hash, [])) if r is not None]


def accepted(world: World) -> Iterator[dict[str, Any]]:
    """Every invoice with a KSeF number (status 200), in acquisition order."""
    for ref in list(index(world).by_ksef.values()):
        rec = get(world, ref)
        if rec is not None:
            yield rec


def pending_count(world: World, session_reference: str) -> int:
    return index(world).pending.get(session_reference, 0)


def invoice_bytes(world: World, record: dict[str, Any]) -> bytes | None:
    return world.store.get_blob(f"invoice/{record['referenceNumber']}")


