"""The KSeF side of receiving (issue #6 item 1; PROTOCOL.md §6.3, §6.4, §14.4): one export package of a
PermanentStorage window, delivered, and where the next adjacent window starts; single downloads for
small gaps (§6.2: 64 per hour, "for low volume only").

`Pipeline` holds what every step needs for one company. The checkpoint itself is moved by the caller
(inbox.py), and only after `export_package` returned, i.e. after every file of the package is delivered.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ksefd import clock as clocks
from ksefd.ksef import (
    ZIP,
    Exporter,
    ExportFailed,
    ExportPackage,
    ProtocolError,
    Receiver,
    StartedExport,
    format_instant,
    next_checkpoint,
    parse_instant,
    query_filters,
)
from ksefd.store import Store

from .delivery import Deliverer, DeliveryReport, InboxFolder, ReceivedInvoice, StagingBook, recover
from .hooks import InvoiceHooks
from .schedule import HourlyBudget
from .started import StartedExports

log = structlog.get_logger("ksefd.daemon.inbox")

FROM_AFTER_HWM = 420         # export status: `from` is after the HWM with restrict=true (§6.3)
SMALL_GAP = 20               # at most this many single downloads instead of an export (§6.2, 64/h)


@dataclass
class InboxMetrics:
    """Counters for `ksefd status` and /metrics (monotonic within one run)."""

    exports: int = 0
    packages_truncated: int = 0
    metadata_exports: int = 0          # onlyMetadata exports of the reconciliation
    single_downloads: int = 0
    delivered: int = 0
    duplicates_skipped: int = 0
    rate_limited: int = 0
    failures: int = 0
    reconcile_runs: int = 0
    reconcile_missing: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Pipeline:
    company: str
    store: Store
    clock: clocks.Clock
    exporter: Exporter
    receiver: Receiver
    budget: HourlyBudget
    folder: InboxFolder
    hooks: InvoiceHooks
    workdir: Path
    metrics: InboxMetrics = field(default_factory=InboxMetrics)
    compression: str = ZIP
    small_gap: int = SMALL_GAP

    @property
    def started(self) -> StartedExports:
        return StartedExports(self.store.kv, self.company)

    @property
    def staging(self) -> StagingBook:
        return StagingBook(self.store.kv, self.company)

    def deliverer(self, subject_type: str) -> Deliverer:
        return Deliverer(self.company, subject_type, self.folder, self.store.inbox, self.staging,
                         before_write=self.hooks.note, after_place=self._after_place)

    async def _after_place(self, targets: list[tuple[str, Path]]) -> None:
        await self.hooks.fire(targets)

    async def recover(self) -> int:
        """After a crash: place what was staged (before `folder.prepare` removes unstaged temps)."""
        return await recover(self.staging, self.store.inbox)

    async def deliver(self, subject_type: str, invoices: list[ReceivedInvoice] | Iterator[ReceivedInvoice]
                      ) -> DeliveryReport:
        report = await self.deliverer(subject_type).deliver(invoices)
        self.metrics.delivered += len(report.delivered)
        self.metrics.duplicates_skipped += report.skipped
        return report


@dataclass(frozen=True)
class PackageResult:
    next_from: str               # where the next adjacent window starts (KSeF's own date string)
    more: bool                   # True: the window is not exhausted yet, export again at once
    invoice_count: int
    report: DeliveryReport
    caught_up: bool = False      # `from` was after the HWM: nothing new is final yet


async def export_package(p: Pipeline, subject_type: str, filters: dict[str, Any], *,
                         prestart: bool = False) -> PackageResult:
    """Export one package of `filters`' window, deliver it, and say where the next window starts (§6.4 step 3).

    The export is recorded until its package is delivered, and one recorded earlier for exactly this window
    (pre-started, or started by a process since killed) is used instead of a new one (started.py).
    `prestart`: once this package is downloaded and is truncated, start the next window's export at once, so
    that KSeF builds it while this one is delivered (the caller exports that window next)."""
    date_from = str(filters["dateRange"]["from"])
    _clean(p.workdir)
    try:
        started, package = await _obtain(p, subject_type, filters)
    except ExportFailed as failed:
        if failed.code == FROM_AFTER_HWM:
            log.info("inbox.nothing_final_yet", company=p.company, subject=subject_type, date_from=date_from)
            return PackageResult(date_from, False, 0, DeliveryReport(), caught_up=True)
        raise
    following: asyncio.Task[None] | None = None
    try:
        next_from, more = _next_window(package, filters)
        if prestart and more and parse_instant(next_from) > parse_instant(date_from):
            following = asyncio.create_task(_prestart(p, subject_type, next_from))
        report = await _deliver_package(p, subject_type, package)
    finally:
        package.cleanup()
        release_freed_memory()
        if following is not None:
            await following           # a POST in flight: its record must be written before this returns
    await p.started.drop(subject_type, started)
    _check_progress(date_from, next_from, package)
    if package.info.is_truncated:
        p.metrics.packages_truncated += 1
    log.info("inbox.package_done", company=p.company, subject=subject_type, export=package.reference_number,
             invoices=package.info.invoice_count, delivered=len(report.delivered), skipped=report.skipped,
             truncated=package.info.is_truncated, next_from=next_from)
    return PackageResult(next_from, more, package.info.invoice_count, report)


async def _start(p: Pipeline, subject_type: str, filters: dict[str, Any]) -> StartedExport:
    """A new export of `filters`, counted in the hourly budget and recorded as soon as KSeF answers."""
    await p.budget.spend("export")
    p.metrics.exports += 1
    started = await p.exporter.start(filters, compression=p.compression)
    await p.started.keep(subject_type, started)
    return started


async def _obtain(p: Pipeline, subject_type: str, filters: dict[str, Any]) -> tuple[StartedExport, ExportPackage]:
    """The package of `filters`: from the recorded export of this window if there is one and it can still be
    downloaded, else from a new export. A failed export's record is removed (the next attempt starts anew)."""
    recorded = await p.started.find(subject_type, filters)
    if recorded is not None:
        log.info("inbox.recorded_export_used", company=p.company, subject=subject_type,
                 export=recorded.reference_number)
        try:
            return recorded, await p.exporter.fetch(recorded, p.workdir)
        except Exception as error:          # expired, failed, or its parts gone: start a new one
            log.info("inbox.recorded_export_unusable", company=p.company, subject=subject_type,
                     export=recorded.reference_number, error=f"{type(error).__name__}: {error}")
            await p.started.drop(subject_type, recorded)
            _clean(p.workdir)
    started = await _start(p, subject_type, filters)
    try:
        return started, await p.exporter.fetch(started, p.workdir)
    except Exception:
        await p.started.drop(subject_type, started)
        raise


async def _prestart(p: Pipeline, subject_type: str, next_from: str) -> None:
    """Start the export of the window after this package (exactly the filters worker._step will build from
    the checkpoint), unless it is recorded already or the hourly budget has no call left right now."""
    filters = query_filters(subject_type, format_instant(parse_instant(next_from)), None, now=p.clock.now())
    if p.budget.wait_seconds() > 0 or await p.started.has(subject_type, filters):
        return
    try:
        await _start(p, subject_type, filters)
    except Exception as error:             # the next step starts it itself
        log.info("inbox.prestart_failed", company=p.company, subject=subject_type,
                 error=f"{type(error).__name__}: {error}")


async def export_metadata(p: Pipeline, subject_type: str, filters: dict[str, Any]
                          ) -> tuple[list[dict[str, Any]], str, bool]:
    """One metadata-only export (`onlyMetadata`, §6.3) of `filters`' window: (InvoiceMetadata list, where the
    next window starts, whether more is waiting). One call lists up to 10 000 invoices, where the metadata
    query lists 250 per call from the same hourly budget."""
    date_from = str(filters["dateRange"]["from"])
    await p.budget.spend("export")
    p.metrics.exports += 1
    p.metrics.metadata_exports += 1
    _clean(p.workdir)
    try:
        package = await p.exporter.export(filters, p.workdir, compression=p.compression, only_metadata=True)
    except ExportFailed as failed:
        if failed.code == FROM_AFTER_HWM:
            return [], date_from, False
        raise
    try:
        next_from, more = _next_window(package, filters)
        metadata = package.metadata
    finally:
        package.cleanup()
    _check_progress(date_from, next_from, package)
    return metadata, next_from, more


async def _deliver_package(p: Pipeline, subject_type: str, package: ExportPackage) -> DeliveryReport:
    in_archive: set[str] = set()

    def received() -> Iterator[ReceivedInvoice]:
        for invoice in package.invoices():
            if invoice.metadata is None:
                raise ProtocolError(f"invoice {invoice.ksef_number} is in the export archive but not in its "
                                    "_metadata.json; its bytes cannot be checked")
            in_archive.add(invoice.ksef_number)
            yield ReceivedInvoice(invoice.ksef_number, invoice.xml, invoice.metadata)

    report = await p.deliver(subject_type, received())
    missing_numbers = dict.fromkeys(n for n in package.index.numbers if n not in in_archive)
    if missing_numbers:
        log.warning("inbox.package_incomplete", company=p.company, export=package.reference_number,
                    missing=len(missing_numbers))
        if len(missing_numbers) > p.small_gap:
            raise ProtocolError(f"export {package.reference_number} lacks {len(missing_numbers)} invoices its "
                                "_metadata.json lists; the window will be exported again")
        missing = [meta for meta in map(package.index.get, missing_numbers) if meta is not None]
        report.add(await fetch_singles(p, subject_type, missing))
    return report


async def fetch_singles(p: Pipeline, subject_type: str, metadata: list[dict[str, Any]]) -> DeliveryReport:
    """Download a few invoices one by one (GET /invoices/ksef/{n}, hash checked) and deliver them."""
    known = await p.store.inbox.delivered_among(p.company, [str(m["ksefNumber"]) for m in metadata])
    invoices = []
    for meta in metadata:
        number = str(meta["ksefNumber"])
        if number in known:
            continue
        p.metrics.single_downloads += 1
        xml = await p.receiver.download(number, expected_hash=meta.get("invoiceHash"))
        invoices.append(ReceivedInvoice(number, xml, meta))
    return await p.deliver(subject_type, invoices)


def _next_window(package: ExportPackage, filters: dict[str, Any]) -> tuple[str, bool]:
    """§6.4 step 3: a truncated package continues from its last date; otherwise from the HWM, unless the
    window had an end before the HWM (a backfill window capped at 100 days, §14.4): then from that end,
    and the window after it is exported at once."""
    window_to = filters["dateRange"].get("to")
    following = next_checkpoint(package.info.as_mapping(), "PermanentStorage", window_to)
    if package.info.is_truncated:
        return following, True
    # Compared as instants: KSeF may report the HWM capped at `to`, in its own 7-digit spelling.
    return following, window_to is not None and parse_instant(following) >= parse_instant(str(window_to))


def _check_progress(date_from: str, next_from: str, package: ExportPackage) -> None:
    before, after = parse_instant(date_from), parse_instant(next_from)
    if after < before:
        raise ProtocolError(f"export {package.reference_number} would move the checkpoint back from {date_from} "
                            f"to {next_from}; kept")
    if after == before and package.info.is_truncated:
        raise ProtocolError(f"export {package.reference_number} is truncated at its own start {date_from}: more "
                            "invoices share one permanentStorageDate than a package holds")


def release_freed_memory() -> None:
    """Give the pages a package's objects freed back to the system (glibc keeps them in its heaps, one per
    thread that touched the package, and a backfill's RSS would ratchet up package by package)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):        # not glibc (musl has no malloc_trim)
        return None
    return function


def _clean(workdir: Path) -> None:
    """Remove what a killed run left in the work folder (decrypted parts and archives)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for leftover in workdir.iterdir():
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
