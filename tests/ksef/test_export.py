"""Exports (issue #4 item 6, PROTOCOL.md §6.3-6.4, §14.4): the §6.4 checkpoint rule, and decrypt -> join ->
unpack -> _metadata.json on packages built by the tests' own code; the full flow against the simulator."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ksefd.ksef.crypto import SymmetricKey
from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.export import ExportFailed, ExportOptions
from ksefd.ksef.export_package import (
    archive_compression,
    decrypt_part,
    iter_invoices,
    join_parts,
    next_checkpoint,
    read_metadata,
)
from ksefd.ksef.receiving import format_instant, parse_instant, query_filters
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.ksef.receiving_support import put_invoices

QUICK = ExportOptions(poll_first=0.02, poll_max=0.1)

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


def test_checkpoint_after_a_capped_window_is_its_end_when_the_hwm_is_later() -> None:
    end = "2026-02-25T00:00:00+00:00"
    assert next_checkpoint({"isTruncated": False, "permanentStorageHwmDate": HWM}, window_to=end) == end
    assert next_checkpoint({"isTruncated": False, "permanentStorageHwmDate": HWM},
                           window_to="2026-03-02T00:00:00+00:00") == HWM


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


# -- against the simulator, over HTTP ------------------------------------------------------------------------

def receiving_sim(**settings: Any) -> SimConfig:
    return SimConfig(limits_profile="off", hwm_lag_s=0.0, **settings)


def a_minute_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


@pytest.mark.parametrize("compression", ["Zip", "TarGz"])
async def test_export_downloads_decrypts_joins_and_unpacks_every_invoice(
        compression: str, sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim(export_part_size=2000))   # several parts (50 MB on KSeF)
    ctx = await token_context(sim)
    since = a_minute_ago()
    sent = await put_invoices(ctx, tmp_path, 15)
    package = await ctx.exporter(QUICK).export(query_filters("Subject1", since), tmp_path / "export",
                                               compression=compression)
    assert package.compression == compression and len(package.info.parts) > 1
    assert not package.info.is_truncated and package.info.invoice_count == 15
    received = {invoice.ksef_number: invoice.xml for invoice in package.invoices()}
    assert received == sent                                              # exact bytes, hashes checked
    assert {m["ksefNumber"] for m in package.metadata} == set(sent)
    assert package.next_checkpoint() == package.info.permanent_storage_hwm_date
    package.cleanup()
    assert list((tmp_path / "export").iterdir()) == []                   # decrypted parts are gone too


async def test_a_truncated_export_continues_from_its_last_date_and_then_from_the_hwm(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim(query_cap=25))          # the package cap (10 000 on KSeF)
    ctx = await token_context(sim)
    exporter = ctx.exporter(QUICK)
    checkpoint = format_instant(a_minute_ago())
    sent = await put_invoices(ctx, tmp_path, 60)
    delivered: list[str] = []
    truncated_packages = 0
    for _ in range(10):
        package = await exporter.export(query_filters("Subject1", checkpoint), tmp_path / "export")
        delivered += [invoice.ksef_number for invoice in package.invoices()]
        following = package.next_checkpoint()
        if package.info.is_truncated:
            truncated_packages += 1
            assert following == package.info.last_permanent_storage_date   # §6.4, verbatim
        else:
            assert following == package.info.permanent_storage_hwm_date
        package.cleanup()
        checkpoint = following
        if not package.info.is_truncated:
            break
    assert truncated_packages == 2
    assert set(delivered) == set(sent)                                   # nothing missed ...
    assert len(delivered) - len(set(delivered)) <= truncated_packages    # ... only boundary repeats (§6.4.4)

    later = await put_invoices(ctx, tmp_path, 5, start=1000)             # the next cycle sees only new ones
    package = await exporter.export(query_filters("Subject1", checkpoint), tmp_path / "export")
    assert {invoice.ksef_number for invoice in package.invoices()} == set(later)


async def test_metadata_only_export(sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim())
    ctx = await token_context(sim)
    since = a_minute_ago()
    sent = await put_invoices(ctx, tmp_path, 3)
    package = await ctx.exporter(QUICK).export(query_filters("Subject1", since), tmp_path / "export",
                                               only_metadata=True, compression="TarGz")
    assert list(package.invoices()) == []
    assert {m["ksefNumber"] for m in package.metadata} == set(sent)


async def test_an_export_from_after_the_hwm_ends_with_420(sim_factory: Any, token_context: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", hwm_lag_s=60.0))
    ctx = await token_context(sim)
    with pytest.raises(ExportFailed) as failed:
        await ctx.exporter(QUICK).export(query_filters("Subject1", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)),
                                         tmp_path)
    assert failed.value.code == 420 and failed.value.retryable


async def test_a_backfill_window_is_capped_at_100_days_and_the_next_one_starts_where_it_ended(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=receiving_sim(), clock=clock)
    ctx = await token_context(sim, clock=clock)
    start = clock.now() - dt.timedelta(minutes=1)
    early = await put_invoices(ctx, tmp_path, 4)
    clock.advance(105 * 24 * 3600)                                       # beyond one 100-day window
    late = await put_invoices(ctx, tmp_path, 3, start=100)
    clock.advance(10)                                                    # let the HWM pass them
    exporter = ctx.exporter(QUICK)
    first_filters = query_filters("Subject1", start, now=clock.now())
    assert parse_instant(first_filters["dateRange"]["to"]) - start < dt.timedelta(days=100)
    first = await exporter.export(first_filters, tmp_path / "export")
    assert {i.ksef_number for i in first.invoices()} == set(early)
    checkpoint = first.next_checkpoint()
    assert parse_instant(checkpoint) == parse_instant(first_filters["dateRange"]["to"])   # not "now"'s HWM: no gap
    second = await exporter.export(query_filters("Subject1", checkpoint, now=clock.now()), tmp_path / "export")
    assert {i.ksef_number for i in second.invoices()} == set(late)
