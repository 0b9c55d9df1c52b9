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
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.batch_flow import Batch, invoices, zip_archive  # noqa: E402
from tests.support.ksef_auth import access_token  # noqa: E402
from tests.support.receive_flow import Receiver, filters, metadata_of  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "ksef" / "samples" / "invoices" / "FA_3_Przyklad_8.xml"
NIP = "9999999999"


async def start_simulator(state: Path | None) -> tuple[asyncio.subprocess.Process, str]:
    args = [sys.executable, "-m", "ksefd", "--log-format", "json", "sim", "--port", "0", "--limits", "off",
            "--hwm-lag", "0"]
    if state is not None:
        args += ["--state", str(state)]
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("the simulator exited before it was ready")
        found = re.search(r"(http://\S+/v2)", line)
        if found:
            return proc, found.group(1)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(count: int, parts: int, state: Path | None) -> None:
    proc, base_url = await start_simulator(state)
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
            rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
    mode = f"SQLite state ({state})" if state else "in-memory state"
    print(f"{count} invoices in {parts} parts, archive {len(archive) / 1e6:.1f} MB, {mode}")
    print(f"archive built (client side):   {t1 - t0:6.2f} s")
    print(f"open + upload + close:         {t2 - t1:6.2f} s")
    print(f"batch processed:               {t3 - t2:6.2f} s  ({count / (t3 - t2):.0f} invoices/s)")
    print(f"exported back ({exports} exports):     {t4 - t3:6.2f} s")
    print(f"simulator peak RSS:            {rss:6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--state", action="store_true", help="run the simulator with a SQLite --state file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.invoices, args.parts, Path(tmp) / "sim.db" if args.state else None))


if __name__ == "__main__":
    main()
