"""Batch sessions (issue #4 item 5, PROTOCOL.md §5): the archive, parts and encryption checked with the
tests' own AES; the session flow against the simulator over HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ksefd.ksef.batch import match_results
from ksefd.ksef.batch_archive import (
    MAX_PARTS,
    BatchBuildError,
    BatchInvoice,
    ManifestEntry,
    prepare_batch,
)
from ksefd.ksef.crypto import SymmetricKey
from ksefd.ksef.models import SessionInvoice, StatusInfo
from tests.conftest import SAMPLES

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()


def numbered(number: int) -> bytes:
    return SAMPLE.replace(b"<P_2>FV2026/02/150</P_2>", f"<P_2>FV/BATCH/{number}</P_2>".encode())


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def aes_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Independent AES-256-CBC/PKCS#7 (no IV prefix, PROTOCOL.md §13.1)."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()


@pytest.mark.parametrize("compression, part_size", [("Zip", 4000), ("TarGz", 1000)])
def test_archive_is_split_into_separately_encrypted_parts_that_rebuild_it(compression: str, part_size: int,
                                                                          tmp_path: Path) -> None:
    invoices = [BatchInvoice(f"FV_{i:03d}.xml", numbered(i)) for i in range(40)]
    key = SymmetricKey.generate()
    prepared = prepare_batch(iter(invoices), tmp_path / "work", compression=compression, part_size=part_size, key=key)

    assert len(prepared.parts) > 1 and all(p.plain_size <= part_size for p in prepared.parts)
    joined = b""
    for expected_ordinal, part in enumerate(prepared.parts, start=1):
        sealed = part.path.read_bytes()
        assert part.ordinal_number == expected_ordinal
        assert (part.size, part.sha256) == (len(sealed), b64sha(sealed))
        assert part.size == (part.plain_size // 16 + 1) * 16          # pure PKCS#7 growth, no IV prefix
        joined += aes_decrypt(key.key, key.iv, sealed)                  # each part is its own CBC stream
    assert (prepared.archive_size, prepared.archive_hash) == (len(joined), b64sha(joined))
    assert not (tmp_path / "work" / "batch.zip").exists()               # the plain archive is gone

    if compression == "Zip":
        with zipfile.ZipFile(io.BytesIO(joined)) as archive:
            contents = {name: archive.read(name) for name in archive.namelist()}
    else:
        with tarfile.open(fileobj=io.BytesIO(joined), mode="r:gz") as archive:
            contents = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}  # type: ignore[union-attr]
    assert contents == {inv.file_name: inv.content for inv in invoices}
    assert [e.file_name for e in prepared.entries] == [inv.file_name for inv in invoices]
    assert all(e.invoice_hash == b64sha(numbered(i)) for i, e in enumerate(prepared.entries))

    body = prepared.batch_file()
    assert body["compressionType"] == compression and body["fileSize"] == len(joined)
    assert [p["ordinalNumber"] for p in body["fileParts"]] == list(range(1, len(prepared.parts) + 1))
    prepared.cleanup()
    assert not any(p.path.exists() for p in prepared.parts)


def test_invoices_can_come_from_files(tmp_path: Path) -> None:
    source = tmp_path / "in.xml"
    source.write_bytes(SAMPLE)
    prepared = prepare_batch([BatchInvoice("a.xml", source)], tmp_path / "w")
    assert prepared.entries == [ManifestEntry("a.xml", b64sha(SAMPLE), len(SAMPLE))]
    assert len(prepared.parts) == 1


@pytest.mark.parametrize("invoices, message", [
    ([BatchInvoice("a.xml", b"<x/>"), BatchInvoice("a.xml", b"<y/>")], "appears twice"),
    ([BatchInvoice("dir/a.xml", b"<x/>")], "plain file name"),
    ([BatchInvoice("..", b"<x/>")], "plain file name"),
    ([BatchInvoice("a.xml", b"")], "empty"),
    ([], "at least one invoice"),
])
def test_bad_batches_are_refused_with_the_reason(invoices: list[BatchInvoice], message: str, tmp_path: Path) -> None:
    with pytest.raises(BatchBuildError, match=message):
        prepare_batch(invoices, tmp_path)


def test_limits_on_invoice_count_part_count_and_part_size(tmp_path: Path) -> None:
    with pytest.raises(BatchBuildError, match="at most 3 invoices"):
        prepare_batch([BatchInvoice(f"{i}.xml", b"<x/>") for i in range(4)], tmp_path, max_invoices=3)
    many = [BatchInvoice(f"{i}.xml", numbered(i)) for i in range(20)]
    with pytest.raises(BatchBuildError, match=f"at most {MAX_PARTS} parts"):
        prepare_batch(many, tmp_path, part_size=100)
    with pytest.raises(BatchBuildError, match="part_size"):
        prepare_batch(many, tmp_path, part_size=100_000_001)


def listed(name: str | None, data: bytes, code: int = 200, number: int = 1) -> SessionInvoice:
    return SessionInvoice(ordinal_number=number, reference_number=f"ref-{number}", invoice_hash=b64sha(data),
                          invoicing_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                          status=StatusInfo(code, "x"), invoice_file_name=name)


def test_results_are_matched_by_file_name_then_by_hash() -> None:
    entries = [ManifestEntry("a.xml", b64sha(b"A"), 1), ManifestEntry("b.xml", b64sha(b"B"), 1),
               ManifestEntry("c.xml", b64sha(b"C"), 1), ManifestEntry("copy.xml", b64sha(b"A"), 1)]
    ksef = [listed("b.xml", b"B", 440, 1), listed(None, b"A", 200, 2), listed("a.xml", b"A", 200, 3),
            listed("zzz.xml", b"Z", 430, 4)]
    results, unmatched = match_results(entries, ksef)
    assert [(r.entry.file_name, r.invoice.reference_number if r.invoice else None) for r in results] == [
        ("a.xml", "ref-3"), ("b.xml", "ref-1"), ("c.xml", None), ("copy.xml", "ref-2")]
    assert results[0].accepted and not results[1].accepted and results[2].status_code is None
    assert [u.reference_number for u in unmatched] == ["ref-4"]
