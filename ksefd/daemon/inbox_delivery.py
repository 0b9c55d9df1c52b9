"""Delivering received invoices into a company's inbox (issue #6 items 2 and 3; DESIGN.md, folder contract).

Each invoice becomes `<ksefNumber>.json` (its InvoiceMetadata exactly as KSeF sent it) and `<ksefNumber>.xml`
(the exact bytes, whose SHA-256 must equal the metadata's invoiceHash), in the inbox itself (`flat`) or in
`YYYY/MM/` below it (`year-month`, from the date inside the KSeF number: the day KSeF accepted the invoice,
which is when a purchase invoice counts as received). The JSON is written first, so an ERP that reacts to
the XML always finds its metadata beside it. Both writes are atomic (ksefd.spool: temp file, fsync, rename).

The KSeF number comes from the network and becomes a file name: it must match the KSeF number format
exactly (`ksefd.ksef.receiving.check_ksef_number`), so no separator, dot-dot or drive letter can get in.

Deduplication (item 3): a KSeF number recorded in `inbox_delivered` is never written again, even after the
ERP has moved the file away. Files are written a chunk at a time and each chunk is recorded in one
transaction right after its files are durable; a crash between the two leaves files that the next run
finds with the same bytes (no second copy) and records then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from ksefd import spool
from ksefd.ksef.crypto import sha256_b64
from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.receiving import KSEF_NUMBER_RE, check_ksef_number, parse_instant
from ksefd.store import Delivery, InboxRepo

log = structlog.get_logger("ksefd.daemon.inbox")

CHUNK = 250                 # invoices written, then recorded in one transaction
WRITE_THREADS = 4           # fsync is I/O wait: a few threads overlap it


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


class InboxFolder:
    """The file side of one company's inbox."""

    def __init__(self, root: Path, layout: str = "flat") -> None:
        relative_path("1111111111-20260101-000000000000-00", layout)    # fail early on a bad layout
        self.root = root
        self.layout = layout

    def xml_path(self, ksef_number: str) -> Path:
        return self.root.joinpath(*relative_path(ksef_number, self.layout).parts)

    def prepare(self) -> int:
        """Create the inbox and remove temporary files a killed run left behind; returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        removed = spool.remove_stale_temps(self.root)
        if self.layout == "year-month":
            for folder in self.root.glob("[0-9][0-9][0-9][0-9]/[0-1][0-9]"):
                if folder.is_dir():
                    removed += spool.remove_stale_temps(folder)
        return removed

    def write(self, invoice: ReceivedInvoice) -> Path:
        """Write `<n>.json` then `<n>.xml` atomically (blocking: call it in a thread). If the XML cannot be
        written (a full disk), the JSON written for it is removed again: no metadata without its invoice."""
        xml_path = self.xml_path(invoice.ksef_number)
        json_path = xml_path.with_suffix(".json")
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        had_json = json_path.exists()
        spool.write_atomic(json_path, spool.json_bytes(invoice.metadata))
        try:
            try:
                spool.write_new(xml_path, invoice.xml)
            except spool.SpoolConflict:
                # Never delivered by us (the store says so), yet a file with this KSeF number and other bytes
                # is there: not KSeF's invoice. KSeF's bytes are the truth for this name.
                log.warning("inbox.foreign_file_replaced", path=str(xml_path))
                spool.write_atomic(xml_path, invoice.xml)
        except BaseException:
            if not had_json:
                json_path.unlink(missing_ok=True)
            raise
        return xml_path

    def write_many(self, invoices: list[ReceivedInvoice], pool: ThreadPoolExecutor) -> list[Path | OSError]:
        """Write each invoice; the path, or the OSError that stopped it (the others are still written)."""
        futures = [pool.submit(self.write, invoice) for invoice in invoices]
        results: list[Path | OSError] = []
        for future in futures:
            try:
                results.append(future.result())
            except OSError as error:
                results.append(error)
        return results

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)      # KSeF numbers written now
    skipped: int = 0                                         # already delivered earlier (or twice in a package)

    def add(self, other: DeliveryReport) -> None:
        self.delivered += other.delivered
        self.skipped += other.skipped


# Called with the invoices of a chunk before their files are written, and after they are recorded.
HookBefore = Callable[[list[tuple[str, Path]]], Awaitable[None]]
HookAfter = Callable[[list[tuple[str, Path]]], Awaitable[None]]


class Deliverer:
    """Writes invoices into one company's inbox once each, recording every chunk in the store."""

    def __init__(self, company: str, subject_type: str, folder: InboxFolder, repo: InboxRepo, *,
                 before_write: HookBefore | None = None, after_record: HookAfter | None = None,
                 chunk: int = CHUNK) -> None:
        self.company = company
        self.subject_type = subject_type
        self.folder = folder
        self.repo = repo
        self.before_write = before_write
        self.after_record = after_record
        self.chunk = chunk
        self._seen: set[str] = set()

    async def deliver(self, invoices: Iterable[ReceivedInvoice]) -> DeliveryReport:
        """Deliver every invoice not delivered before. `invoices` may be a lazy iterator reading an archive:
        it is advanced in a worker thread, one chunk at a time."""
        report = DeliveryReport()
        source = iter(invoices)
        with ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="inbox-write") as pool:
            while batch := await asyncio.to_thread(_take, source, self.chunk):
                report.add(await self._deliver_chunk(batch, pool))
        return report

    async def _deliver_chunk(self, batch: list[ReceivedInvoice], pool: ThreadPoolExecutor) -> DeliveryReport:
        for invoice in batch:
            invoice.checked()
        numbers = [i.ksef_number for i in batch]
        done = await self.repo.delivered_among(self.company, numbers) | self._seen
        fresh: list[ReceivedInvoice] = []
        for invoice in batch:
            if invoice.ksef_number not in done:
                fresh.append(invoice)
                done.add(invoice.ksef_number)
        report = DeliveryReport(skipped=len(batch) - len(fresh))
        if not fresh:
            return report
        if self.before_write is not None:
            await self.before_write([(i.ksef_number, self.folder.xml_path(i.ksef_number)) for i in fresh])
        results = await asyncio.get_running_loop().run_in_executor(None, self.folder.write_many, fresh, pool)
        written = [(i, r) for i, r in zip(fresh, results, strict=True) if isinstance(r, Path)]
        if written:
            await self.repo.record_delivered(self.company, [
                Delivery(ksef_number=i.ksef_number, subject_type=self.subject_type, sha256=i.metadata["invoiceHash"],
                         path=self.folder.relative(path), permanent_storage_date=i.storage_date())
                for i, path in written])
            self._seen.update(i.ksef_number for i, _ in written)
            report.delivered = [i.ksef_number for i, _ in written]
            log.info("inbox.delivered", company=self.company, subject=self.subject_type, count=len(written),
                     skipped=report.skipped)
            if self.after_record is not None:
                await self.after_record([(i.ksef_number, path) for i, path in written])
        failed = [r for r in results if isinstance(r, OSError)]
        if failed:
            # Recorded above: what is on disk is delivered. The rest (and the checkpoint) waits for the next try.
            log.warning("inbox.write_failed", company=self.company, failed=len(failed), written=len(written),
                        error=str(failed[0]))
            raise failed[0]
        return report


def _take(source: Iterator[ReceivedInvoice], count: int) -> list[ReceivedInvoice]:
    return list(itertools.islice(source, count))
