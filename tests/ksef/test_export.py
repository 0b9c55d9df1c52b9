"""Exports (issue #4 item 6, PROTOCOL.md §6.3-6.4, §14.4): the §6.4 checkpoint rule, and decrypt -> join ->
unpack -> _metadata.json on packages built by the tests' own code; the full flow against the simulator."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ksefd.ksef.crypto import SymmetricKey
from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.export_package import (
    archive_compression,
    decrypt_part,
    iter_invoices,
    join_parts,
    next_checkpoint,
    read_metadata,
)

HWM = "2026-03-01T10:00:00.1234567+00:00"
LAST = "2026-02-20T08:30:15.7654321+00:00"


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def aes_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()


def test_checkpoint_after_a_truncated_package_is_its_last_date_verbatim() -> None:
    package = {"isTruncated": True, "lastPermanentStorageDate": LAST, "permanentStorageHwmDate": HWM}
    assert next_checkpoint(package) == LAST                      # 7 fractional digits kept exactly


def test_checkpoint_after_a_complete_package_is_the_hwm() -> None:
    assert next_checkpoint({"isTruncated": False, "permanentStorageHwmDate": HWM}) == HWM


def test_checkpoint_refuses_to_guess() -> None:
    with pytest.raises(ProtocolError, match="lastPermanentStorageDate"):
        next_checkpoint({"isTruncated": True, "permanentStorageHwmDate": HWM})
    with pytest.raises(ProtocolError, match="HwmDate"):
        next_checkpoint({"isTruncated": False})


def test_checkpoint_for_other_date_types() -> None:
    assert next_checkpoint({"isTruncated": True, "lastInvoicingDate": LAST}, "Invoicing") == LAST
    assert next_checkpoint({"isTruncated": False}, "Invoicing", window_to=HWM) == HWM
    assert next_checkpoint({"isTruncated": True, "lastIssueDate": "2026-02-20"}, "Issue") == "2026-02-20T00:00:00+01:00"


KSEF_A = "5265877635-20260220-0100001AF629-AF"
KSEF_B = "5265877635-20260220-0100001AF62A-12"


def build_package(compression: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    if compression == "Zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def metadata_for(invoices: dict[str, bytes]) -> bytes:
    return json.dumps({"invoices": [{"ksefNumber": n, "invoiceHash": b64sha(x)} for n, x in invoices.items()]}
                      ).encode()


@pytest.mark.parametrize("compression", ["Zip", "TarGz"])
def test_parts_decrypted_joined_and_unpacked(compression: str, tmp_path: Path) -> None:
    invoices = {KSEF_A: b"<Faktura>A</Faktura>" * 300, KSEF_B: os.urandom(5000)}
    files = {f"{n}.xml": x for n, x in invoices.items()}
    files["_metadata.json"] = metadata_for(invoices)
    archive = build_package(compression, files)
    key = SymmetricKey.generate()
    cut = [archive[i:i + 1000] for i in range(0, len(archive), 1000)]
    parts = []
    for index, plain in enumerate(cut, start=1):
        target = tmp_path / f"p{index}"
        decrypt_part(aes_encrypt(key.key, key.iv, plain), key, target, part_hash=b64sha(plain), part_size=len(plain))
        parts.append(target)
    joined = tmp_path / "package"
    assert join_parts(parts, joined) == len(archive)
    kind = archive_compression(joined, None, compression)             # compressionType missing: requested type
    metadata = read_metadata(joined, kind)
    assert [m["ksefNumber"] for m in metadata] == [KSEF_A, KSEF_B]
    got = {inv.ksef_number: inv.xml for inv in iter_invoices(joined, kind, metadata)}
    assert got == invoices


def test_a_part_that_decrypts_to_other_bytes_is_refused(tmp_path: Path) -> None:
    key = SymmetricKey.generate()
    sealed = aes_encrypt(key.key, key.iv, b"abc")
    with pytest.raises(ProtocolError, match="partHash"):
        decrypt_part(sealed, key, tmp_path / "x", part_hash=b64sha(b"abd"))
    with pytest.raises(ProtocolError, match="declared 4"):
        decrypt_part(sealed, key, tmp_path / "x", part_size=4)
    with pytest.raises(ProtocolError, match="padding"):
        decrypt_part(sealed, SymmetricKey.generate(), tmp_path / "x")


@pytest.mark.parametrize("files, message", [
    ({"../evil.xml": b"<x/>"}, "is not a KSeF number"),
    ({f"{KSEF_A}.xml": b"<tampered/>"}, "does not match its invoiceHash"),
    ({"notes.txt": b"hi"}, "unexpected file"),
])
def test_untrusted_archive_content_is_refused(files: dict[str, bytes], message: str, tmp_path: Path) -> None:
    files = {**files, "_metadata.json": metadata_for({KSEF_A: b"<Faktura/>"})}
    path = tmp_path / "p.zip"
    path.write_bytes(build_package("Zip", files))
    with pytest.raises(ProtocolError, match=message):
        list(iter_invoices(path, "Zip", read_metadata(path, "Zip")))


def test_metadata_is_required_and_compression_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.zip"
    path.write_bytes(build_package("Zip", {f"{KSEF_A}.xml": b"<x/>"}))
    with pytest.raises(ProtocolError, match=r"no _metadata\.json"):
        read_metadata(path, "Zip")
    with pytest.raises(ProtocolError, match="declared TarGz"):
        archive_compression(path, "TarGz", "Zip")
    assert archive_compression(path, "Zip", "TarGz") == "Zip"          # the declared type wins (§14.4)
