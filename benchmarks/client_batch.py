"""A batch session of many invoices through the client, with the simulator in its own process so the
client's peak memory is measured alone (issue #4 item 5: "note the peak RSS").

Invoices are made one at a time from an official sample (as the daemon reads them from disk), archived,
split, encrypted, uploaded, processed by `ksefd sim`, and every per-invoice result is read back.

    .venv/bin/python benchmarks/client_batch.py [--invoices 10000] [--compression Zip|TarGz] [--part-mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ksefd.ksef.auth import AuthOptions, ContextIdentifier  # noqa: E402
from ksefd.ksef.batch import BatchOptions, BatchSender  # noqa: E402
from ksefd.ksef.batch_archive import BatchInvoice, prepare_batch_async  # noqa: E402
from ksefd.ksef.client import KsefClient  # noqa: E402
from ksefd.ksef.credentials import KsefToken  # noqa: E402
from ksefd.logs import configure_logging  # noqa: E402
from ksefd.samples import make_invoice, sample_bytes  # noqa: E402
from tests.support.ksef_auth import create_ksef_token  # noqa: E402

NIP = "9999999999"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024          # Linux reports KiB


def invoices(count: int) -> Iterator[BatchInvoice]:
    template = sample_bytes("FA_3_Przyklad_1.xml")
    for n in range(count):
        yield BatchInvoice(f"FV_{n:05d}.xml", make_invoice(template, number=f"FV/BENCH-BATCH/{n}", seller_nip=NIP))


async def start_simulator() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksefd", "sim", "--port", "0", "--limits", "off",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT)
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("the simulator exited before it listened")
        found = re.search(r"listening on (\S+)", line)
        if found:
            return process, found.group(1)


async def main(count: int, compression: str, part_mb: int) -> None:
    process, base = await start_simulator()
    try:
        async with aiohttp.ClientSession() as http:
            token = await create_ksef_token(http, base, NIP, ["InvoiceWrite", "InvoiceRead"])
        print(f"client peak RSS before the batch: {peak_rss_mb():.0f} MB")
        async with KsefClient("test", base_url=base, auth_options=AuthOptions(poll_first=0.01)) as client:
            ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
            with tempfile.TemporaryDirectory() as work:
                started = time.perf_counter()
                prepared = await prepare_batch_async(invoices(count), Path(work), compression=compression,
                                                     part_size=part_mb * 1_000_000)
                built = time.perf_counter()
                print(f"archive: {count} invoices, {prepared.archive_size / 1e6:.1f} MB {compression} in "
                      f"{len(prepared.parts)} part(s), built and encrypted in {built - started:.1f} s")
                batch = BatchSender(ctx.auth, client.public_keys, options=BatchOptions(poll_first=0.2, poll_max=1.0))
                opened = await batch.open(prepared)
                await batch.upload(prepared, opened)
                await batch.close(opened.reference_number)
                uploaded = time.perf_counter()
                status = await batch.wait(opened.reference_number)
                processed = time.perf_counter()
                outcome = await batch.outcome(opened.reference_number, prepared.entries, status)
                finished = time.perf_counter()
        accepted = sum(r.accepted for r in outcome.results)
        print(f"open + upload + close: {uploaded - built:.1f} s; simulator processing: {processed - uploaded:.1f} s; "
              f"reading {len(outcome.results)} results: {finished - processed:.1f} s")
        print(f"accepted {accepted} of {count}; session status {outcome.status.status.code}")
        print(f"client peak RSS: {peak_rss_mb():.0f} MB (simulator process not included)")
    finally:
        process.terminate()
        await process.wait()
    print(f"simulator peak RSS: {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--compression", choices=["Zip", "TarGz"], default="Zip")
    parser.add_argument("--part-mb", type=int, default=100)
    arguments = parser.parse_args()
    configure_logging("console", logging.WARNING)
    asyncio.run(main(arguments.invoices, arguments.compression, arguments.part_mb))
