"""Batch sessions (issue #4 item 5, PROTOCOL.md §5): the archive, parts and encryption checked with the
tests' own AES; the session flow against the simulator over HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree

from ksefd.ksef.batch import BatchOptions, BatchSender, match_results
from ksefd.ksef.batch_archive import (
    MAX_PARTS,
    BatchBuildError,
    BatchInvoice,
    ManifestEntry,
    prepare_batch,
    prepare_batch_async,
)
from ksefd.ksef.client import KsefContext
from ksefd.ksef.crypto import SymmetricKey
from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.models import SessionInvoice, StatusInfo
from ksefd.ksef.transport import RetryPolicy
from ksefd.samples import make_invoice, sample_bytes
from ksefd.sim.config import SimConfig
from tests.conftest import SAMPLES
from tests.ksef.conftest import SELLER_NIP

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


# -- against the simulator, over HTTP ------------------------------------------------------------------------

QUICK = BatchOptions(poll_first=0.05, poll_max=0.2)
UPO_NS = "{http://upo.schematy.mf.gov.pl/KSeF/v4-3}"


def invoices(count: int, start: int = 0) -> Iterator[BatchInvoice]:
    """Unique invoices made lazily from the official sample, as the daemon would read them from disk."""
    template = sample_bytes("FA_3_Przyklad_1.xml")
    for n in range(start, start + count):
        yield BatchInvoice(f"FV_{n:05d}.xml",
                           make_invoice(template, number=f"FV/BATCH/{n}", seller_nip=SELLER_NIP))


def sender(ctx: KsefContext, options: BatchOptions = QUICK) -> BatchSender:
    return BatchSender(ctx.auth, ctx.client.public_keys, options=options)


@pytest.mark.parametrize("compression", ["Zip", "TarGz"])
async def test_batch_in_several_parts_is_accepted_with_results_and_upo(
        compression: str, sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    good = list(invoices(12))
    assert isinstance(good[0].content, bytes)
    bad = BatchInvoice("broken.xml", good[0].content.replace(b"<P_2>", b"<P_2_typo>", 1))
    duplicate = BatchInvoice("again.xml", good[1].content)                                     # same P_2: 440
    prepared = await prepare_batch_async([*good, bad, duplicate], tmp_path, compression=compression,
                                         part_size=6000 if compression == "Zip" else 700)
    assert len(prepared.parts) >= 3

    outcome = await sender(ctx).send(prepared)

    assert outcome.session_ok and outcome.unmatched == []
    by_name = {r.entry.file_name: r for r in outcome.results}
    assert all(by_name[i.file_name].accepted and by_name[i.file_name].ksef_number for i in good)
    assert by_name["broken.xml"].status_code == 430
    assert by_name["again.xml"].status_code == 440 or by_name[good[1].file_name].status_code == 440
    assert outcome.status.invoice_count == 14
    upo = await sender(ctx).session_upo(outcome.reference_number, outcome.status)
    numbers = {e.text for _, xml in upo for e in etree.fromstring(xml).iter(f"{UPO_NS}NumerKSeFDokumentu")}
    assert numbers == {r.ksef_number for r in outcome.results if r.accepted}


async def test_after_a_key_rotation_the_batch_opens_with_the_new_key(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    await ctx.client.public_keys.get("SymmetricKeyEncryption")             # cached before the rotation
    async with http.post(f"{sim.root_url}/sim/keys/rotate", json={"usage": "SymmetricKeyEncryption"}) as resp:
        assert resp.status == 200
    prepared = await prepare_batch_async(invoices(3, start=500), tmp_path)
    batch = sender(ctx)
    opened = await batch.open(prepared)                                        # 21470, re-fetch, wrap again
    current = await ctx.client.public_keys.get("SymmetricKeyEncryption")
    assert opened.public_key_id == current.public_key_id
    await batch.upload(prepared, opened)
    await batch.close(opened.reference_number)
    status = await batch.wait(opened.reference_number)
    assert status.status.code == 200 and status.successful_invoice_count == 3


async def test_results_can_be_read_after_a_restart_from_the_reference_and_manifest(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    prepared = await prepare_batch_async(invoices(4, start=700), tmp_path)
    first = sender(await token_context(sim))
    opened = await first.open(prepared)
    await first.upload(prepared, opened)
    await first.close(opened.reference_number)
    await first.close(opened.reference_number)                                 # a repeated close is harmless
    restarted = sender(await token_context(sim))                               # new client, same context
    await restarted.wait(opened.reference_number)
    outcome = await restarted.outcome(opened.reference_number, prepared.entries)
    assert [r.accepted for r in outcome.results] == [True] * 4


async def test_uploads_survive_dropped_connections(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim, retry=RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.05))
    await ctx.authenticate()
    prepared = await prepare_batch_async(invoices(30, start=900), tmp_path, part_size=8000)
    assert len(prepared.parts) >= 5
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "drop=0.3,seed=7"}) as resp:
        assert resp.status == 200
    with structlog.testing.capture_logs() as events:
        outcome = await sender(ctx).send(prepared)
    assert outcome.session_ok and all(r.accepted for r in outcome.results)
    dropped_uploads = [e for e in events if e["event"] == "ksef.request_failed" and e["path"].startswith("presigned:")]
    assert dropped_uploads, "the fault switch dropped no upload; pick another seed"


async def test_a_part_changed_on_disk_is_not_uploaded(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    prepared = await prepare_batch_async(invoices(2, start=950), tmp_path)
    batch = sender(ctx)
    opened = await batch.open(prepared)
    prepared.parts[0].path.write_bytes(b"\x00" * prepared.parts[0].size)
    with pytest.raises(ProtocolError, match="changed on disk"):
        await batch.upload(prepared, opened)


@pytest.mark.timeout(600)
async def test_ten_thousand_invoices_in_one_batch(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="production"))
    ctx = await token_context(sim)
    started = time.monotonic()
    prepared = await prepare_batch_async(invoices(10_000, start=10_000), tmp_path)
    built = time.monotonic()
    outcome = await sender(ctx, BatchOptions(poll_first=0.5, poll_max=2.0)).send(prepared)
    done = time.monotonic()
    assert outcome.session_ok, outcome.status.status
    assert len(outcome.results) == 10_000 and outcome.unmatched == []
    assert all(r.accepted for r in outcome.results), {r.status_code for r in outcome.results}
    assert len({r.ksef_number for r in outcome.results}) == 10_000
    print(f"10 000-invoice batch: archive {prepared.archive_size} B in {len(prepared.parts)} part(s), "
          f"built in {built - started:.1f} s, sent and processed in {done - built:.1f} s")


async def test_parts_go_up_in_parallel_to_their_presigned_urls(
        sim_factory: Any, token_context: Callable[..., Any], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """§5.5: uploads are not rate limited and may run in parallel (`upload_concurrency` at a time); the
    simulator refuses an upload that carries an Authorization header, so acceptance also proves there was none."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    ctx = await token_context(sim)
    prepared = await prepare_batch_async(invoices(30, start=1200), tmp_path, part_size=8000)
    assert len(prepared.parts) >= 5
    batch = sender(ctx, BatchOptions(poll_first=0.05, poll_max=0.2, upload_concurrency=3))
    opened = await batch.open(prepared)
    transport = ctx.client.transport
    presigned = transport.presigned
    in_flight, peak = 0, 0

    async def watched(*args: Any, **kwargs: Any) -> Any:      # the real call, counted while it is under way
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await presigned(*args, **kwargs)
        finally:
            in_flight -= 1

    transport.presigned = watched
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "latency=0.2"}) as resp:  # slow storage
        assert resp.status == 200
    try:
        await batch.upload(prepared, opened)
    finally:
        transport.presigned = presigned
        async with http.delete(f"{sim.root_url}/sim/faults") as resp:
            assert resp.status == 200
    assert peak == 3
    await batch.close(opened.reference_number)
    assert (await batch.wait(opened.reference_number)).successful_invoice_count == 30
