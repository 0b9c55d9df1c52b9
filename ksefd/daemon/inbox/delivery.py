"""Delivering received invoices into a company's inbox (issue #6 items 2 and 3; DESIGN.md, folder contract).

Each invoice becomes `<ksefNumber>.json` (its InvoiceMetadata exactly as KSeF sent it) and `<ksefNumber>.xml`
(the exact bytes, whose SHA-256 must equal the metadata's invoiceHash), in the inbox itself (`flat`) or in
`YYYY/MM/` below it (`year-month`, from the date inside the KSeF number: the day KSeF accepted the invoice,
which is when a purchase invoice counts as received). The JSON appears first, so an ERP that reacts to the
XML always finds its metadata beside it.

The KSeF number comes from the network and becomes a file name: it must match the KSeF number format
exactly, so no separator, dot-dot, drive letter or newline can get in.

Exactly once (item 3), even when the process is killed at any moment and the ERP moves files away at any
moment. A chunk of invoices goes through four durable steps:

1. stage: every file is written as a dot-file temp in its destination folder, and the chunk's temps are
   made durable together (spool_group.sync_data: one syncfs on Linux instead of two fsyncs per invoice; an
   ERP never looks at dot-files; a temp that was never staged is garbage, removed at the next start);
2. note the staged temps (kv namespace `inbox_staged`), then record the invoices as delivered
   (`inbox_delivered`): from here on no export will ever write them again;
3. rename the temps into place (atomic) and fsync the folders;
4. clear the note (once the last chunk of a delivery is placed: the next chunk's note replaces it).

After a crash, `recover` finishes step 3 for every noted invoice: a temp still there is renamed into place;
a temp gone means its rename happened (the ERP may even have taken the file already). So nothing is lost,
nothing appears twice, and nothing half-written is ever visible.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from ksefd import spool
from ksefd.ksef import KSEF_NUMBER_RE, ProtocolError, check_ksef_number, parse_instant, sha256_b64
from ksefd.spool_group import sync_data
from ksefd.store import Delivery, InboxRepo, KeyValueRepo

log = structlog.get_logger("ksefd.daemon.inbox")

CHUNK = 500                 # invoices staged, recorded and placed together (a few MB in memory) ...
CHUNK_BYTES = 4_000_000     # ... or fewer, once their XML holds this many bytes
STAGED_NAMESPACE = "inbox_staged"


def relative_path(ksef_number: str, layout: str) -> PurePosixPath:
    """Where the XML of `ksef_number` goes, relative to the inbox (a ProtocolError for a malformed number)."""
    number = check_ksef_number(ksef_number)
    if not KSEF_NUMBER_RE.fullmatch(number):      # `$` in the pattern also matches before a final newline
        raise ProtocolError(f"{ksef_number!r} is not a KSeF number (NIP-YYYYMMDD-XXXXXXXXXXXX-CC)")
    if layout == "flat":
        return PurePosixPath(f"{number}.xml")
    if layout == "year-month":
        day = number.split("-")[1]            # YYYYMMDD, validated by the KSeF number pattern
        return PurePosixPath(day[:4], day[4:6], f"{number}.xml")
    raise ValueError(f"inbox layout {layout!r} must be flat or year-month")


@dataclass(frozen=True)
class ReceivedInvoice:
    ksef_number: str
    xml: bytes
    metadata: dict[str, Any]

    def checked(self) -> ReceivedInvoice:
        """The bytes must be the ones KSeF described (invoiceHash) and the name a KSeF number."""
        check_ksef_number(self.ksef_number)
        if self.metadata.get("ksefNumber") != self.ksef_number:
            raise ProtocolError(f"invoice {self.ksef_number}: its metadata names {self.metadata.get('ksefNumber')!r}")
        expected = self.metadata.get("invoiceHash")
        if sha256_b64(self.xml) != expected:
            raise ProtocolError(f"invoice {self.ksef_number}: the bytes do not match invoiceHash {expected!r}")
        return self

    def storage_date(self) -> dt.datetime | None:
        value = self.metadata.get("permanentStorageDate")
        try:
            return parse_instant(value) if isinstance(value, str) else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Staged:
    """The two temps of one invoice, written and fsynced, waiting to be renamed into place."""

    ksef_number: str
    xml_path: Path
    xml_temp: Path
    json_temp: Path

    @property
    def json_path(self) -> Path:
        return self.xml_path.with_suffix(".json")

    def place(self) -> None:
        if self.json_temp.exists():
            os.replace(self.json_temp, self.json_path)
        if self.xml_temp.exists():
            os.replace(self.xml_temp, self.xml_path)

    def to_json(self) -> dict[str, str]:
        return {"xml": str(self.xml_path), "xmlTemp": str(self.xml_temp), "jsonTemp": str(self.json_temp)}

    @classmethod
    def from_json(cls, number: str, raw: dict[str, str]) -> Staged:
        return cls(number, Path(raw["xml"]), Path(raw["xmlTemp"]), Path(raw["jsonTemp"]))


class InboxFolder:
    """The file side of one company's inbox."""

    def __init__(self, root: Path, layout: str = "flat") -> None:
        relative_path("1111111111-20260101-000000000000-00", layout)    # fail early on a bad layout
        self.root = root
        self.layout = layout
        self._written: list[Path] | None = None      # during stage_many: temps awaiting one group sync
        self._folders: set[Path] = set()             # during stage_many: folders known to exist

    def xml_path(self, ksef_number: str) -> Path:
        return self.root.joinpath(*relative_path(ksef_number, self.layout).parts)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def prepare(self) -> int:
        """Create the inbox; remove temps a killed run left unstaged (call after `recover`). Returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        removed = spool.remove_stale_temps(self.root)
        if self.layout == "year-month":
            for folder in self.root.glob("[0-9][0-9][0-9][0-9]/[0-1][0-9]"):
                if folder.is_dir():
                    removed += spool.remove_stale_temps(folder)
        return removed

    def stage(self, invoice: ReceivedInvoice) -> Staged:
        """Step 1 for one invoice (blocking: call it in a thread). On failure nothing of it is left behind.
        Alone its temps are fsynced; within `stage_many` they are synced with the rest of the chunk."""
        xml_path = self.xml_path(invoice.ksef_number)
        if xml_path.parent not in self._folders:
            xml_path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(xml_path.parent)
        sync = self._written is None
        json_temp = spool.write_temp(xml_path.parent, f"{invoice.ksef_number}.json", spool.json_bytes(invoice.metadata),
                                     sync=sync)
        try:
            xml_temp = spool.write_temp(xml_path.parent, xml_path.name, invoice.xml, sync=sync)
        except BaseException:
            json_temp.unlink(missing_ok=True)
            raise
        if self._written is not None:
            self._written += (json_temp, xml_temp)
        return Staged(invoice.ksef_number, xml_path, xml_temp, json_temp)

    def stage_many(self, invoices: list[ReceivedInvoice]) -> list[Staged | OSError]:
        """Stage each invoice; its Staged, or the OSError that stopped it (the others are still staged).
        The temps are written one after the other (page cache) and made durable by one group sync; if that
        fails, none of them counts as staged and all are removed."""
        results: list[Staged | OSError] = []
        self._written, self._folders = [], set()
        try:
            for invoice in invoices:
                try:
                    results.append(self.stage(invoice))
                except OSError as error:
                    results.append(error)
            try:
                sync_data(self._written)
            except OSError as error:
                for temp in self._written:
                    temp.unlink(missing_ok=True)
                return [error] * len(invoices)
        finally:
            self._written, self._folders = None, set()
        return results

    @staticmethod
    def place_many(staged: Iterable[Staged]) -> None:
        """Step 3: rename every temp into place, then make the renames durable."""
        folders = set()
        for item in staged:
            item.place()
            folders.add(item.xml_path.parent)
        for folder in folders:
            spool.fsync_directory(folder)


class StagingBook:
    """The note of step 2 (kv namespace `inbox_staged`, one key per company and subject type)."""

    def __init__(self, kv: KeyValueRepo, company: str) -> None:
        self.kv = kv
        self.company = company

    def _key(self, subject_type: str) -> str:
        return f"{self.company}|{subject_type}"

    async def note(self, subject_type: str, staged: list[Staged], deliveries: list[Delivery]) -> None:
        entries = {s.ksef_number: {**s.to_json(), "sha256": d.sha256, "path": d.path,
                                   "stored": d.permanent_storage_date.isoformat() if d.permanent_storage_date else None}
                   for s, d in zip(staged, deliveries, strict=True)}
        await self.kv.put(STAGED_NAMESPACE, self._key(subject_type), json.dumps(entries))

    async def clear(self, subject_type: str) -> None:
        await self.kv.delete(STAGED_NAMESPACE, self._key(subject_type))

    async def pending(self) -> dict[str, dict[str, dict[str, Any]]]:
        """subject type -> KSeF number -> noted entry, for this company."""
        prefix = f"{self.company}|"
        found = await self.kv.items(STAGED_NAMESPACE)
        return {key[len(prefix):]: json.loads(value) for key, value in found.items() if key.startswith(prefix)}


async def recover(book: StagingBook, repo: InboxRepo) -> int:
    """Finish what a killed run staged (see the module docstring); returns how many invoices."""
    finished = 0
    for subject_type, entries in (await book.pending()).items():
        staged = [Staged.from_json(number, raw) for number, raw in entries.items()]
        await asyncio.to_thread(InboxFolder.place_many, staged)
        await repo.record_delivered(book.company, [
            Delivery(ksef_number=number, subject_type=subject_type, sha256=raw["sha256"], path=raw["path"],
                     permanent_storage_date=dt.datetime.fromisoformat(raw["stored"]) if raw.get("stored") else None)
            for number, raw in entries.items()])
        await book.clear(subject_type)
        finished += len(entries)
        log.info("inbox.staged_recovered", company=book.company, subject=subject_type, count=len(entries))
    return finished


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)      # KSeF numbers placed now
    skipped: int = 0                                         # already delivered earlier (or twice in a package)

    def add(self, other: DeliveryReport) -> None:
        self.delivered += other.delivered
        self.skipped += other.skipped


# Called with (KSeF number, XML path) of a chunk before its files are written, and after they are placed.
Hook = Callable[[list[tuple[str, Path]]], Awaitable[None]]


class Deliverer:
    """Writes invoices into one company's inbox once each (steps 1-4 of the module docstring)."""

    def __init__(self, company: str, subject_type: str, folder: InboxFolder, repo: InboxRepo, book: StagingBook, *,
                 before_write: Hook | None = None, after_place: Hook | None = None, chunk: int = CHUNK) -> None:
        self.company = company
        self.subject_type = subject_type
        self.folder = folder
        self.repo = repo
        self.book = book
        self.before_write = before_write
        self.after_place = after_place
        self.chunk = chunk
        self._seen: set[str] = set()

    async def deliver(self, invoices: Iterable[ReceivedInvoice]) -> DeliveryReport:
        """Deliver every invoice not delivered before. `invoices` may be a lazy iterator reading an archive:
        it is advanced in a worker thread, one chunk at a time."""
        report = DeliveryReport()
        # A chunk of an earlier attempt in this run whose renames failed (the inbox made read-only, a name
        # taken by a folder) is still in its note, recorded as delivered: place it first, before this
        # delivery's note replaces that one and its temps are taken for garbage at the next start.
        if self.subject_type in await self.book.pending():
            await recover(self.book, self.repo)
        source = iter(invoices)
        while batch := await asyncio.to_thread(_take, source, self.chunk):
            report.add(await self._deliver_chunk(batch))
        if report.delivered:
            # Step 4 once for all chunks: each chunk's note replaces the one before (the same key), and a
            # note whose files are all placed is harmless (`recover` finds their temps gone and records them
            # again, which changes nothing): one commit per package instead of one per chunk.
            await self.book.clear(self.subject_type)
        return report

    async def _fresh(self, batch: list[ReceivedInvoice]) -> list[ReceivedInvoice]:
        for invoice in batch:
            invoice.checked()
        done = await self.repo.delivered_among(self.company, [i.ksef_number for i in batch]) | self._seen
        fresh = []
        for invoice in batch:
            if invoice.ksef_number not in done:
                fresh.append(invoice)
                done.add(invoice.ksef_number)
        return fresh

    async def _deliver_chunk(self, batch: list[ReceivedInvoice]) -> DeliveryReport:
        fresh = await self._fresh(batch)
        report = DeliveryReport(skipped=len(batch) - len(fresh))
        if not fresh:
            return report
        if self.before_write is not None:
            await self.before_write([(i.ksef_number, self.folder.xml_path(i.ksef_number)) for i in fresh])
        results = await asyncio.to_thread(self.folder.stage_many, fresh)
        staged = [(i, r) for i, r in zip(fresh, results, strict=True) if isinstance(r, Staged)]
        if staged:
            deliveries = [Delivery(ksef_number=i.ksef_number, subject_type=self.subject_type,
                                   sha256=i.metadata["invoiceHash"], path=self.folder.relative(s.xml_path),
                                   permanent_storage_date=i.storage_date()) for i, s in staged]
            await self.book.note(self.subject_type, [s for _, s in staged], deliveries)
            await self.repo.record_delivered(self.company, deliveries)
            await asyncio.to_thread(self.folder.place_many, [s for _, s in staged])
            self._seen.update(i.ksef_number for i, _ in staged)
            report.delivered = [i.ksef_number for i, _ in staged]
            log.info("inbox.delivered", company=self.company, subject=self.subject_type, count=len(staged),
                     skipped=report.skipped)
            if self.after_place is not None:
                await self.after_place([(i.ksef_number, s.xml_path) for i, s in staged])
        failed = [r for r in results if isinstance(r, OSError)]
        if failed:
            # What was staged is delivered. The rest (and the checkpoint) waits for the next attempt.
            log.warning("inbox.write_failed", company=self.company, failed=len(failed), written=len(staged),
                        error=str(failed[0]))
            raise failed[0]
        return report


def _take(source: Iterator[ReceivedInvoice], count: int) -> list[ReceivedInvoice]:
    """The next chunk: `count` invoices, fewer once they hold CHUNK_BYTES (invoices with attachments are
    up to 3 MB each, PROTOCOL.md §5: a chunk's memory stays bounded by bytes, not only by count)."""
    batch: list[ReceivedInvoice] = []
    size = 0
    for invoice in source:
        batch.append(invoice)
        size += len(invoice.xml)
        if len(batch) >= count or size >= CHUNK_BYTES:
            break
    return batch
