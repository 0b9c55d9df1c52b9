"""The file side of a batch session (PROTOCOL.md §5 steps 1-3): archive, split, encrypt, all through disk.

Invoices go one at a time into a ZIP (or tar.gz) file in a working directory the caller owns; the archive
is hashed, cut binarily into parts of at most 100 MB, and each part is encrypted on its own with the
session's AES-256-CBC key and IV (PKCS#7, IV not prepended, §13.1) into its own file. Memory use stays
at about one invoice plus one read buffer, whatever the batch size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .crypto import SymmetricKey, b64

ZIP, TAR_GZ = "Zip", "TarGz"
COMPRESSION_TYPES = (ZIP, TAR_GZ)
MAX_PART_SIZE = 100_000_000          # bytes before encryption (§5.2; MB means 10^6)
MAX_PARTS = 50
MAX_ARCHIVE_SIZE = 5_000_000_000
MAX_INVOICES = 10_000
CHUNK = 1 << 20
ARCHIVE_NAMES = {ZIP: "batch.zip", TAR_GZ: "batch.tar.gz"}


class BatchBuildError(ValueError):
    """The invoices cannot make a valid batch; the message says which limit or name is wrong."""


@dataclass(frozen=True)
class BatchInvoice:
    """One invoice for a batch: the name it gets inside the archive (KSeF echoes it back as
    `invoiceFileName`) and its exact bytes, or a file holding them."""

    file_name: str
    content: bytes | Path


@dataclass(frozen=True)
class ManifestEntry:
    """What we sent, for matching KSeF's per-invoice results (by name, then by hash; §5 recommendation)."""

    file_name: str
    invoice_hash: str      # Base64 SHA-256 of the exact bytes (= KSeF's invoiceHash)
    size: int


@dataclass(frozen=True)
class EncryptedPart:
    ordinal_number: int
    path: Path
    size: int              # encrypted size, declared in fileParts
    sha256: str            # Base64 SHA-256 of the encrypted bytes
    plain_size: int

    def as_json(self) -> dict[str, Any]:
        return {"ordinalNumber": self.ordinal_number, "fileSize": self.size, "fileHash": self.sha256}


@dataclass
class PreparedBatch:
    """An archive ready to upload; `key` must stay secret (never logged, never persisted in clear)."""

    compression: str
    archive_size: int
    archive_hash: str
    parts: list[EncryptedPart]
    entries: list[ManifestEntry]
    key: SymmetricKey = field(repr=False)
    workdir: Path

    def batch_file(self) -> dict[str, Any]:
        """The `batchFile` object of POST /sessions/batch (OA BatchFileInfo)."""
        return {"fileSize": self.archive_size, "fileHash": self.archive_hash, "compressionType": self.compression,
                "fileParts": [part.as_json() for part in self.parts]}

    def cleanup(self) -> None:
        """Delete the encrypted parts (after the session is closed; they are useless afterwards)."""
        for part in self.parts:
            part.path.unlink(missing_ok=True)


def _check_name(name: str, seen: set[str]) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise BatchBuildError(f"invoice file name {name!r} must be a plain file name such as FV_2026_001.xml "
                              "(no folders, not empty)")
    if len(name.encode("utf-8")) > 255:
        raise BatchBuildError(f"invoice file name {name[:40]!r}… is longer than 255 bytes")
    if name in seen:
        raise BatchBuildError(f"invoice file name {name!r} appears twice in one batch; KSeF reports results "
                              "by file name, so each must be unique")
    seen.add(name)


def _content(invoice: BatchInvoice) -> bytes:
    if isinstance(invoice.content, Path):
        # os-level, the file's size (+1, to see its end) at once: no buffered file object per invoice (issue #16)
        fd = os.open(invoice.content, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            chunks, want = [], os.fstat(fd).st_size + 1
            while chunk := os.read(fd, want):
                chunks.append(chunk)
                want = CHUNK
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)
    return invoice.content


class _ArchiveWriter:
    def __init__(self, path: Path, compression: str) -> None:
        self.compression = compression
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if compression == ZIP:
            self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        else:
            self._tar = tarfile.open(path, "w:gz", compresslevel=6)   # noqa: SIM115 - closed in close()
        self._stamp = time.time()

    def add(self, name: str, data: bytes) -> None:
        if self._zip is not None:
            info = zipfile.ZipInfo(name, dt.datetime.fromtimestamp(self._stamp).timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            self._zip.writestr(info, data)
        elif self._tar is not None:
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(data), int(self._stamp), 0o644
            self._tar.addfile(member, io.BytesIO(data))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()


def build_archive(invoices: Iterable[BatchInvoice], path: Path, compression: str = ZIP,
                  max_invoices: int = MAX_INVOICES) -> list[ManifestEntry]:
    """Write the invoices one by one into a ZIP or tar.gz at `path`; returns the manifest."""
    if compression not in COMPRESSION_TYPES:
        raise BatchBuildError(f"compression {compression!r} must be Zip or TarGz")
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    writer = _ArchiveWriter(path, compression)
    try:
        for invoice in invoices:
            _check_name(invoice.file_name, seen)
            if len(entries) >= max_invoices:
                raise BatchBuildError(f"a batch session takes at most {max_invoices} invoices (PROTOCOL.md §5); "
                                      "split the invoices over several batches")
            data = _content(invoice)
            if not data:
                raise BatchBuildError(f"invoice {invoice.file_name!r} is empty")
            writer.add(invoice.file_name, data)
            entries.append(ManifestEntry(invoice.file_name, b64(hashlib.sha256(data).digest()), len(data)))
    finally:
        writer.close()
    if not entries:
        raise BatchBuildError("a batch needs at least one invoice")
    return entries


def hash_file(path: Path) -> tuple[int, str]:
    """(size, Base64 SHA-256) of a file, read in chunks."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, b64(sha.digest())


def split_and_encrypt(archive: Path, workdir: Path, key: SymmetricKey, part_size: int = MAX_PART_SIZE
                      ) -> list[EncryptedPart]:
    """Cut `archive` into consecutive parts of at most `part_size` bytes and encrypt each separately."""
    size = archive.stat().st_size
    count = max(1, -(-size // part_size))
    if count > MAX_PARTS:
        raise BatchBuildError(f"the archive ({size} bytes) would need {count} parts of {part_size} bytes; "
                              f"KSeF accepts at most {MAX_PARTS} parts (PROTOCOL.md §5): send fewer invoices per batch")
    parts: list[EncryptedPart] = []
    with archive.open("rb") as source:
        for ordinal in range(1, count + 1):
            target = workdir / f"part-{ordinal:03d}.aes"
            left, plain, sha, written = min(part_size, size - (ordinal - 1) * part_size), 0, hashlib.sha256(), 0
            stream = key.encryptor()
            with target.open("wb") as sink:
                while left > 0:
                    chunk = source.read(min(CHUNK, left))
                    if not chunk:
                        raise BatchBuildError(f"archive {archive} shrank while being split")
                    left -= len(chunk)
                    plain += len(chunk)
                    sealed = stream.update(chunk) if left else stream.update(chunk) + stream.finalize()
                    sha.update(sealed)
                    written += sink.write(sealed)
            parts.append(EncryptedPart(ordinal, target, written, b64(sha.digest()), plain))
    return parts


def prepare_batch(invoices: Iterable[BatchInvoice], workdir: Path, *, compression: str = ZIP,
                  part_size: int = MAX_PART_SIZE, max_invoices: int = MAX_INVOICES,
                  key: SymmetricKey | None = None) -> PreparedBatch:
    """Archive, hash, split and encrypt (blocking file work: call `prepare_batch_async` from the loop).

    `workdir` is an existing folder that only this batch uses; the plain archive is deleted once the
    encrypted parts exist, the parts stay until `PreparedBatch.cleanup()`."""
    if not 1 <= part_size <= MAX_PART_SIZE:
        raise BatchBuildError(f"part_size {part_size} must be between 1 and {MAX_PART_SIZE} bytes (PROTOCOL.md §5)")
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)   # plain invoices: only ksefd reads them
    archive = workdir / ARCHIVE_NAMES.get(compression, "batch.bin")
    try:
        entries = build_archive(invoices, archive, compression, max_invoices)
        archive_size, archive_hash = hash_file(archive)
        if archive_size > MAX_ARCHIVE_SIZE:
            raise BatchBuildError(f"the archive has {archive_size} bytes; KSeF accepts at most {MAX_ARCHIVE_SIZE}")
        key = key or SymmetricKey.generate()
        parts = split_and_encrypt(archive, workdir, key, part_size)
    finally:
        archive.unlink(missing_ok=True)
    return PreparedBatch(compression, archive_size, archive_hash, parts, entries, key, workdir)


async def prepare_batch_async(invoices: Iterable[BatchInvoice], workdir: Path, **kwargs: Any) -> PreparedBatch:
    """`prepare_batch` in a worker thread, so compression and encryption do not stall the event loop."""
    return await asyncio.to_thread(prepare_batch, invoices, workdir, **kwargs)

