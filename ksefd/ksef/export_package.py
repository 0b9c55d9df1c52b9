"""The file side of an export (PROTOCOL.md §6.3, §6.4, §14.4): decrypt the parts, join them, read the archive.

Each part is its own AES-256-CBC stream with the export's key and IV; the plaintexts joined in
`ordinalNumber` order make one ZIP or tar.gz (`package.compressionType`, falling back to the type we asked
for) holding `{ksefNumber}.xml` per invoice and `_metadata.json` = {"invoices": [InvoiceMetadata]}.
Everything inside comes from the network: names are checked, sizes capped, hashes compared.

`next_checkpoint` is the §6.4 rule: after a truncated package continue from its last date, otherwise
from the high-water mark.
"""

from __future__ import annotations

import array
import contextlib
import functools
import hashlib
import json
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import msgspec

from .batch_archive import CHUNK, TAR_GZ, ZIP
from .crypto import SymmetricKey, b64
from .errors import ProtocolError
from .export_metadata import spill_entries
from .receiving import check_ksef_number, day_start, instant_text, parse_instant

METADATA_NAME = "_metadata.json"
MAX_INVOICE_BYTES = 10_000_000        # an invoice is at most 3 MB with attachments (§5); leave room
MAX_METADATA_BYTES = 500_000_000
LAST_DATE_FIELDS = {"PermanentStorage": "lastPermanentStorageDate", "Invoicing": "lastInvoicingDate",
                    "Issue": "lastIssueDate"}


def next_checkpoint(package: Mapping[str, Any], date_type: str = "PermanentStorage",
                    window_to: str | None = None) -> str:
    """Where the next adjacent window starts (§6.4 step 3), as KSeF's own date string.

    Truncated package -> its last{DateType}Date; otherwise the permanentStorageHwmDate (PermanentStorage),
    or the window's own `to` when that is earlier, and for the other date types, which have no HWM, the
    `to` of the window just exported."""
    if package.get("isTruncated"):
        last = package.get(LAST_DATE_FIELDS[date_type])
        if not isinstance(last, str):
            raise ProtocolError(f"the export package is truncated but has no {LAST_DATE_FIELDS[date_type]}")
        return day_start(last) if date_type == "Issue" else instant_text(last)
    if date_type == "PermanentStorage":
        hwm = package.get("permanentStorageHwmDate")
        if not isinstance(hwm, str):
            raise ProtocolError("the export package has no permanentStorageHwmDate; keep the old checkpoint")
        # A window with an explicit end (a backfill capped at 100 days) covered nothing after that end, whatever
        # HWM the server reports for "now": continuing from the HWM would leave a gap.
        if window_to is not None and parse_instant(instant_text(window_to)) < parse_instant(hwm):
            return instant_text(window_to)
        return instant_text(hwm)
    if window_to is None:
        raise ValueError(f"a complete {date_type} export continues from the window's end: pass window_to")
    return instant_text(window_to)


def decrypt_part(encrypted: bytes, key: SymmetricKey, target: Path, *, part_hash: str | None = None,
                 part_size: int | None = None) -> None:
    """Decrypt one part held in memory into `target` (decrypt_file's checks)."""
    with target.open("wb") as sink:
        _decrypt((encrypted[start:start + CHUNK] for start in range(0, len(encrypted), CHUNK)), key, sink,
                 name=target.name, part_hash=part_hash, part_size=part_size)


def decrypt_file(source: Path, key: SymmetricKey, sink: BinaryIO, *, name: str, part_hash: str | None = None,
                 part_size: int | None = None) -> int:
    """Decrypt the encrypted part in `source` chunk by chunk, appending the plaintext to `sink` (the joined
    archive: each part is its own CBC stream, the plaintexts joined in ordinalNumber order make the archive);
    checks the plaintext's size and hash when KSeF declared them. Memory: one chunk. Returns the size."""
    with source.open("rb") as encrypted:
        return _decrypt(iter(functools.partial(encrypted.read, CHUNK), b""), key, sink, name=name,
                        part_hash=part_hash, part_size=part_size)


def _decrypt(chunks: Iterable[bytes], key: SymmetricKey, sink: BinaryIO, *, name: str, part_hash: str | None,
             part_size: int | None) -> int:
    """One part's CBC stream decrypted piece by piece into `sink`; its plaintext size and SHA-256 checked
    against what KSeF declared (PROTOCOL.md, exports)."""
    stream, sha, size = key.decryptor(), hashlib.sha256(), 0
    for chunk in chunks:
        piece = stream.update(chunk)
        sha.update(piece)
        size += sink.write(piece)
    tail = stream.finalize()
    sha.update(tail)
    size += sink.write(tail)
    if part_size is not None and size != part_size:
        raise ProtocolError(f"export part {name} decrypts to {size} bytes, KSeF declared {part_size}")
    if part_hash is not None and b64(sha.digest()) != part_hash:
        raise ProtocolError(f"export part {name} decrypts to bytes whose SHA-256 differs from partHash")
    return size


def join_parts(parts: list[Path], target: Path) -> int:
    """Concatenate decrypted parts (already in ordinalNumber order) into `target`; returns its size."""
    size = 0
    with target.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(CHUNK):
                    size += sink.write(chunk)
    return size


def _read_capped(stream: IO[bytes], limit: int, name: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ProtocolError(f"export archive member {name!r} is larger than {limit} bytes")
    return data


def _members(archive: Path, compression: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, readable) for every regular file of the archive, in archive order."""
    if compression == ZIP:
        with zipfile.ZipFile(archive) as package:
            for info in package.infolist():
                if not info.is_dir():
                    with package.open(info) as stream:
                        yield info.filename, stream
    elif compression == TAR_GZ:
        with tarfile.open(archive, "r:gz") as package:
            for member in package:
                if member.isfile():
                    extracted = package.extractfile(member)
                    if extracted is not None:
                        with extracted:
                            yield member.name, extracted
    else:
        raise ProtocolError(f"unknown export compression type {compression!r} (expected Zip or TarGz)")


def archive_compression(archive: Path, declared: str | None, requested: str) -> str:
    """`package.compressionType` (§14.4), else what we requested; checked against the file's magic bytes."""
    kind = declared if declared in (ZIP, TAR_GZ) else requested
    with archive.open("rb") as source:
        magic = source.read(4)
    actual = ZIP if magic.startswith(b"PK") else TAR_GZ if magic.startswith(b"\x1f\x8b") else None
    if actual is not None and actual != kind:
        raise ProtocolError(f"the export archive is a {actual} file but KSeF declared {kind}")
    return kind


@dataclass(frozen=True)
class ExportedInvoice:
    ksef_number: str
    xml: bytes                             # exact bytes from KSeF, hash checked against the metadata
    metadata: dict[str, Any] | None        # its InvoiceMetadata from _metadata.json (None if missing)


class _Listing(msgspec.Struct):
    invoices: list[msgspec.Raw]


class _Named(msgspec.Struct):
    ksefNumber: Any = None


class MetadataIndex:
    """`_metadata.json` of one package, spilled to a file beside the archive: each InvoiceMetadata is read back
    and decoded only when its invoice is delivered. In memory only the KSeF numbers and where each entry lies
    (the decoded list took 3 kB per invoice, 30 MB for a package of 10 000, PROTOCOL.md §6.4)."""

    def __init__(self, path: Path, spans: array.array[int], numbers: list[str]) -> None:
        self.path = path
        self._spans = spans                   # start, size of entry i at 2i, 2i + 1
        self._at = {number: position for position, number in enumerate(numbers)}   # the last one wins
        self._count = len(numbers)
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def __len__(self) -> int:
        return self._count

    def __contains__(self, ksef_number: object) -> bool:
        return ksef_number in self._at

    @property
    def numbers(self) -> list[str]:
        """Every KSeF number listed, once each."""
        return list(self._at)

    def get(self, ksef_number: str) -> dict[str, Any] | None:
        position = self._at.get(ksef_number)
        return None if position is None else self._entry(position)

    def all(self) -> list[dict[str, Any]]:
        return [self._entry(position) for position in range(self._count)]

    def _entry(self, position: int) -> dict[str, Any]:
        if self._fd is None:
            raise ValueError("the export package was cleaned up")
        start, size = self._spans[2 * position], self._spans[2 * position + 1]
        return _decoded(os.pread(self._fd, size, start))

    def close(self) -> None:
        """Close and remove the spilled file (ExportPackage.cleanup)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def _decoded(raw: bytes) -> dict[str, Any]:
    value = msgspec.json.decode(raw)
    if not isinstance(value, dict):
        raise ProtocolError(f"the export's {METADATA_NAME} lists something that is not an InvoiceMetadata object")
    return value


@contextlib.contextmanager
def _metadata_stream(archive: Path, compression: str) -> Iterator[IO[bytes]]:
    if compression == ZIP:     # straight to the member: opening every member on the way costs 10 000 seeks
        with zipfile.ZipFile(archive) as package:
            try:
                info = package.getinfo(METADATA_NAME)
            except KeyError:
                info = None
            if info is not None and not info.is_dir():
                with package.open(info) as stream:
                    yield stream
                    return
    else:
        for name, stream in _members(archive, compression):
            if name == METADATA_NAME:
                yield stream
                return
    raise ProtocolError(f"the export archive has no {METADATA_NAME}")


def read_metadata_index(archive: Path, compression: str) -> MetadataIndex:
    """`_metadata.json` of the archive (always present since 27.10.2025, §6.3), every KSeF number checked,
    its entries spilled to `<archive>.metadata` (removed by MetadataIndex.close) while it is read
    (export_metadata.py); a listing laid out otherwise is read whole."""
    spill = archive.with_name(archive.name + ".metadata")
    with _metadata_stream(archive, compression) as stream, spill.open("wb") as sink:
        found = spill_entries(stream, sink, MAX_METADATA_BYTES, METADATA_NAME)
    if found is not None:
        return MetadataIndex(spill, *found)
    with _metadata_stream(archive, compression) as stream:
        whole = _read_capped(stream, MAX_METADATA_BYTES, METADATA_NAME)
    try:
        listing = msgspec.json.decode(whole, type=_Listing)
        numbers = [check_ksef_number(msgspec.json.decode(raw, type=_Named).ksefNumber) for raw in listing.invoices]
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"the export's {METADATA_NAME} is not valid JSON with an invoices list of "
                            f"InvoiceMetadata objects: {exc}") from exc
    spans, offset = array.array("q"), 0
    with spill.open("wb") as sink:
        for raw in listing.invoices:
            size = sink.write(memoryview(raw))
            spans += array.array("q", (offset, size))
            offset += size
    return MetadataIndex(spill, spans, numbers)


def invoices_in(archive: Path, compression: str, index: MetadataIndex) -> Iterator[ExportedInvoice]:
    """As `iter_invoices`, with the metadata of each invoice decoded from `index` when it is reached."""
    return _verified(archive, compression, index.get)


def read_metadata(archive: Path, compression: str) -> list[dict[str, Any]]:
    """`_metadata.json` of the archive (always present since 27.10.2025, §6.3)."""
    for name, stream in _members(archive, compression):
        if name == METADATA_NAME:
            try:
                parsed = json.loads(_read_capped(stream, MAX_METADATA_BYTES, name))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ProtocolError(f"the export's {METADATA_NAME} is not valid JSON: {exc}") from exc
            invoices = parsed.get("invoices") if isinstance(parsed, dict) else None
            if not isinstance(invoices, list) or not all(isinstance(i, dict) for i in invoices):
                raise ProtocolError(f"the export's {METADATA_NAME} has no invoices list")
            for item in invoices:
                check_ksef_number(item.get("ksefNumber"))
            return invoices
    raise ProtocolError(f"the export archive has no {METADATA_NAME}")


def iter_invoices(archive: Path, compression: str, metadata: list[dict[str, Any]]) -> Iterator[ExportedInvoice]:
    """The invoices of the archive one at a time (memory: one invoice), each verified:
    the name must be `{valid KSeF number}.xml` and the bytes must match the metadata's invoiceHash."""
    by_number = {item["ksefNumber"]: item for item in metadata}
    return _verified(archive, compression, by_number.get)


def _verified(archive: Path, compression: str, lookup: Callable[[str], dict[str, Any] | None]
              ) -> Iterator[ExportedInvoice]:
    for name, stream in _members(archive, compression):
        if name == METADATA_NAME:
            continue
        if not name.endswith(".xml"):
            raise ProtocolError(f"unexpected file {name!r} in the export archive")
        number = check_ksef_number(name[:-4])
        xml = _read_capped(stream, MAX_INVOICE_BYTES, name)
        meta = lookup(number)
        if meta is not None and meta.get("invoiceHash") != b64(hashlib.sha256(xml).digest()):
            raise ProtocolError(f"invoice {number} in the export does not match its invoiceHash in {METADATA_NAME}")
        yield ExportedInvoice(number, xml, meta)
