"""Simulator batch and export throughput: one batch session of N invoices (variants of an official
sample) in several parts, then a full export of them (truncated at 10 000, continued from
lastPermanentStorageDate), timed phase by phase, with the simulator's peak RSS.

Starts `python -m ksefd sim --port 0 --limits off --hwm-lag 0` in a subprocess; the test side uses its
own crypto (tests/support).

    .venv/bin/python benchmarks/sim_batch_export.py [--invoices 10000] [--parts 4] [--state]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from pathlib import Path

import aiohttp
from _common import NIP, SAMPLES, add_state_option, process_peak_rss_mb, sim_state, start_simulator, state_mode

from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.receive_flow import Receiver, filters, metadata_of

SAMPLE = SAMPLES / "FA_3_Przyklad_8.xml"


async def run(count: int, parts: int, state: Path | None) -> None:
    proc, base_url = await start_simulator("--limits", "off", "--hwm-lag", "0", state=state)
    try:
        async with aiohttp.ClientSession() as http:
            token = await access_token(http, base_url, NIP)
            since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
            t0 = time.perf_counter()
            archive = zip_archive(invoices(SAMPLE.read_bytes(), count))
            t1 = time.perf_counter()
            batch = Batch(http, base_url, token)
            await batch.submit(archive, parts=parts)
            t2 = time.perf_counter()
            final = await batch.wait(timeout_s=3600, interval_s=0.25)
            t3 = time.perf_counter()
            assert final["successfulInvoiceCount"] == count, final
            receiver, received, exports = Receiver(http, base_url, token), set(), 0
            checkpoint = since.isoformat()
            while True:
                exports += 1
                package, files = await receiver.export(filters("Subject1", checkpoint))
                received |= {m["ksefNumber"] for m in metadata_of(files)}
                if not package["isTruncated"]:
                    break
                checkpoint = package["lastPermanentStorageDate"]
            t4 = time.perf_counter()
            assert len(received) == count
            rss = process_peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
    print(f"{count} invoices in {parts} parts, archive {len(archive) / 1e6:.1f} MB, {state_mode(state)}")
    print(f"archive built (client side):   {t1 - t0:6.2f} s")
    print(f"open + upload + close:         {t2 - t1:6.2f} s")
    print(f"batch processed:               {t3 - t2:6.2f} s  ({count / (t3 - t2):.0f} invoices/s)")
    print(f"exported back ({exports} exports):     {t4 - t3:6.2f} s")
    print(f"simulator peak RSS:            {rss:6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=4)
    add_state_option(parser)
    args = parser.parse_args()
    with sim_state(args.state) as state:
        asyncio.run(run(args.invoices, args.parts, state))


if __name__ == "__main__":
    main()
