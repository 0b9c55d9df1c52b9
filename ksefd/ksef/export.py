"""Asynchronous invoice exports (PROTOCOL.md §6.3, §6.4, §14.4): start, poll, download, decrypt, join, unpack.

    exporter = Exporter(ctx.auth, ctx.client.public_keys)
    package = await exporter.export(query_filters("Subject2", checkpoint), workdir)
    for invoice in package.invoices():                     # ExportedInvoice(ksef_number, xml, metadata)
        deliver(invoice)
    checkpoint = package.next_checkpoint()                 # §6.4: persist only after delivery
    package.cleanup()

Exports share the 20-per-hour budget with metadata queries (§6.4); the part downloads are pre-signed GETs
without a token and are not rate limited (§6.3). Each export gets a fresh AES key and IV. A status that
ends badly raises ExportFailed with KSeF's code (420: nothing after the HWM yet; 210: expired; 550: retry).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from .auth import AuthSession
from .batch_archive import COMPRESSION_TYPES, ZIP, hash_file
from .clock import Sleep, poll, real_sleep
from .crypto import SYMMETRIC_KEY_ENCRYPTION, PublicKey, PublicKeys, SymmetricKey, b64
from .errors import KsefError, ProtocolError
from .export_package import (
    ExportedInvoice,
    MetadataIndex,
    archive_compression,
    decrypt_file,
    invoices_in,
    next_checkpoint,
    read_metadata_index,
)
from .models import Model, StatusInfo

log = structlog.get_logger("ksefd.ksef.export")


class ExportPart(Model):
    ordinal_number: int
    part_name: str
    method: str
    url: str
    part_size: int
    part_hash: str
    encrypted_part_size: int
    encrypted_part_hash: str
    expiration_date: str | None = None


class ExportPackageInfo(Model):
    """InvoicePackage; dates stay KSeF's strings (7 fractional digits) for exact checkpoints."""

    invoice_count: int
    size: int
    parts: list[ExportPart]
    is_truncated: bool
    compression_type: str | None = None          # required since 2.7.1 (§14.4); tolerated when missing
    last_issue_date: str | None = None
    last_invoicing_date: str | None = None
    last_permanent_storage_date: str | None = None
    permanent_storage_hwm_date: str | None = None

    def as_mapping(self) -> dict[str, Any]:
        raw: dict[str, Any] = msgspec.to_builtins(self)
        return raw


class ExportStatus(Model):
    status: StatusInfo
    completed_date: str | None = None
    package_expiration_date: str | None = None
    package: ExportPackageInfo | None = None


class ExportFailed(KsefError):
    """The export ended with status `code` >= 300 (§6.3): 210 expired, 415 key, 420 from > HWM, 500, 550."""

    def __init__(self, reference_number: str, status: StatusInfo) -> None:
        details = f" ({'; '.join(status.details)})" if status.details else ""
        super().__init__(f"export {reference_number} ended with status {status.code} {status.description}{details}")
        self.reference_number = reference_number
        self.code = status.code
        self.retryable = status.code in (420, 500, 550)


class ExportTimeout(KsefError):
    retryable = True


@dataclass(frozen=True, repr=False)
class StartedExport:
    reference_number: str
    key: SymmetricKey                              # secret: never log it
    compression: str                               # the type requested
    filters: dict[str, Any]

    def __repr__(self) -> str:
        return f"StartedExport({self.reference_number}, {self.compression})"

    def to_record(self) -> dict[str, Any]:
        """What a restarted process needs to download this export instead of starting another (the key too:
        keep the record where the decrypted invoices may be, never in a log)."""
        return {"referenceNumber": self.reference_number, "key": b64(self.key.key), "iv": b64(self.key.iv),
                "compression": self.compression, "filters": self.filters}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StartedExport:
        key = SymmetricKey(base64.b64decode(record["key"]), base64.b64decode(record["iv"]))
        return cls(str(record["referenceNumber"]), key, str(record["compression"]), dict(record["filters"]))


@dataclass
class ExportPackage:
    """A downloaded, decrypted and joined package in `workdir`, ready to be read member by member."""

    reference_number: str
    info: ExportPackageInfo
    compression: str
    archive: Path
    index: MetadataIndex                 # _metadata.json spilled beside the archive, each entry read when asked for
    filters: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Every InvoiceMetadata of `_metadata.json`, decoded (a metadata-only export, the reconciliation)."""
        return self.index.all()

    def invoices(self) -> Iterator[ExportedInvoice]:
        return invoices_in(self.archive, self.compression, self.index)

    def next_checkpoint(self) -> str:
        date_range = self.filters.get("dateRange", {})
        return next_checkpoint(self.info.as_mapping(), str(date_range.get("dateType", "PermanentStorage")),
                               date_range.get("to"))

    def cleanup(self) -> None:
        self.index.close()
        self.archive.unlink(missing_ok=True)


@dataclass(frozen=True)
class ExportOptions:
    poll_first: float = 0.5          # a 10 000-invoice package may be ready within a second: see it then
    poll_factor: float = 1.5
    poll_max: float = 10.0           # status is 10/s, 60/min, 600/h: one poll every 6 s on average is fine
    wait_budget: float = 3600.0
    download_concurrency: int = 2    # parts (up to 50 MB each) are streamed to disk, then decrypted in order


class Exporter:
    def __init__(self, auth: AuthSession, keys: PublicKeys, *, sleep: Sleep = real_sleep,
                 options: ExportOptions | None = None) -> None:
        self.auth = auth
        self.keys = keys
        self.sleep = sleep
        self.options = options or ExportOptions()

    async def export(self, filters: Mapping[str, Any], workdir: Path, *, compression: str = ZIP,
                     only_metadata: bool = False) -> ExportPackage:
        started = await self.start(filters, compression=compression, only_metadata=only_metadata)
        return await self.fetch(started, workdir)

    async def fetch(self, started: StartedExport, workdir: Path) -> ExportPackage:
        """Wait for an export started earlier (perhaps by a process since killed) and download it."""
        status = await self.wait(started.reference_number)
        return await self.download(started, status, workdir)

    async def start(self, filters: Mapping[str, Any], *, compression: str = ZIP,
                    only_metadata: bool = False) -> StartedExport:
        """POST /invoices/exports (201) with a fresh key and IV. 21182: 10 exports already running."""
        if compression not in COMPRESSION_TYPES:
            raise ValueError(f"compression {compression!r} must be Zip or TarGz")

        async def attempt(key: PublicKey) -> StartedExport:
            symmetric = SymmetricKey.generate()
            body = {"encryption": key.encryption_info(symmetric), "filters": dict(filters),
                    "onlyMetadata": only_metadata, "compressionType": compression}
            # Not replayed after a lost answer: a second export would spend another of the 20 per hour.
            response = await self.auth.request("POST", "/invoices/exports", json=body, replay_safe=False,
                                               expect=(201,))
            answer = response.json()
            reference = answer.get("referenceNumber") if isinstance(answer, dict) else None
            if not isinstance(reference, str):
                raise ProtocolError("POST /invoices/exports answered without a referenceNumber")
            return StartedExport(reference, symmetric, compression, dict(filters))

        started = await self.keys.with_key(SYMMETRIC_KEY_ENCRYPTION, attempt)
        log.info("ksef.export_started", context=self.auth.context.key, export=started.reference_number,
                 subject=filters.get("subjectType"), date_from=filters.get("dateRange", {}).get("from"))
        return started

    async def status(self, reference_number: str) -> ExportStatus:
        response = await self.auth.request("GET", "/invoices/exports/{referenceNumber}",
                                           params={"referenceNumber": reference_number}, expect=(200,))
        return response.decode(ExportStatus)

    async def wait(self, reference_number: str) -> ExportStatus:
        """Poll until the export leaves status 100; raises ExportFailed unless it is 200."""
        def in_progress(_: ExportStatus, waited: float) -> ExportTimeout:
            return ExportTimeout(f"export {reference_number} still in progress after {waited:.0f} s")

        options = self.options
        status = await poll(lambda: self.status(reference_number), lambda s: s.status.code != 100,
                            sleep=self.sleep, first=options.poll_first, factor=options.poll_factor,
                            maximum=options.poll_max, budget=options.wait_budget, gave_up=in_progress)
        if status.status.code != 200:
            raise ExportFailed(reference_number, status.status)
        if status.package is None:
            raise ProtocolError(f"export {reference_number} is done but has no package")
        return status

    async def download(self, started: StartedExport, status: ExportStatus, workdir: Path) -> ExportPackage:
        """Download every part (no token) to a file, then decrypt them in ordinalNumber order into one
        archive and index its _metadata.json. Nothing of the package is held in memory but that index
        (parts are up to 50 MB, a package 10 000 invoices): the parts go through disk chunk by chunk."""
        info = status.package
        if info is None:
            raise ProtocolError(f"export {started.reference_number} has no package to download")
        # 0700: the decrypted parts are invoices; only ksefd reads them (issue #15 point 7).
        await asyncio.to_thread(workdir.mkdir, mode=0o700, parents=True, exist_ok=True)
        parts = sorted(info.parts, key=lambda p: p.ordinal_number)
        if [p.ordinal_number for p in parts] != list(range(1, len(parts) + 1)):
            raise ProtocolError(f"export {started.reference_number} lists parts {[p.ordinal_number for p in parts]}")
        limit = asyncio.Semaphore(max(1, self.options.download_concurrency))
        encrypted = [workdir / f"{started.reference_number}-{p.ordinal_number:03d}.aes" for p in parts]

        async def one(part: ExportPart, target: Path) -> None:
            async with limit:
                await self._fetch_part(part, target)

        archive = workdir / f"{started.reference_number}.{'zip' if started.compression == ZIP else 'tar.gz'}"
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for part, target in zip(parts, encrypted, strict=True):
                        group.create_task(one(part, target))
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from failed
            await asyncio.to_thread(_decrypt_all, parts, encrypted, started.key, archive)
        finally:
            for path in encrypted:
                path.unlink(missing_ok=True)
        compression = archive_compression(archive, info.compression_type, started.compression)
        index = await asyncio.to_thread(read_metadata_index, archive, compression)
        log.info("ksef.export_downloaded", export=started.reference_number, parts=len(parts),
                 invoices=info.invoice_count, truncated=info.is_truncated)
        return ExportPackage(started.reference_number, info, compression, archive, index, started.filters)

    async def _fetch_part(self, part: ExportPart, target: Path) -> None:
        """The encrypted part into `target`, checked against its declared size and hash (two tries)."""
        for attempt in (1, 2):
            with target.open("w+b") as sink:
                response = await self.auth.transport.presigned(part.method or "GET", part.url, expect=(200,),
                                                               into=sink)
            size, digest = await asyncio.to_thread(hash_file, target)
            header = response.headers.get("x-ms-meta-hash") or response.headers.get("X-Ms-Meta-Hash")
            if size == part.encrypted_part_size and digest == part.encrypted_part_hash and (
                    not header or header.strip() == digest):
                return
            log.warning("ksef.export_part_damaged", part=part.ordinal_number, attempt=attempt, size=size)
        error = ProtocolError(f"export part {part.ordinal_number} ({part.part_name}) does not match its declared "
                              "encrypted size or hash after two downloads")
        error.retryable = True
        raise error


def _decrypt_all(parts: list[ExportPart], encrypted: list[Path], key: SymmetricKey, archive: Path) -> None:
    """Join the decrypted parts, in ordinalNumber order, into `archive` (a worker thread)."""
    with archive.open("wb") as sink:
        for part, source in zip(parts, encrypted, strict=True):
            decrypt_file(source, key, sink, name=part.part_name, part_hash=part.part_hash,
                         part_size=part.part_size)
            source.unlink()            # its plaintext is in the archive: free the disk at once
