"""The outbox pipeline end to end (issue #5): the daemon (in this process) against `ksefd sim` (a subprocess).

Prints:
* the time to drain N invoices for one company with the PRODUCTION rate limits (batch sessions),
* invoices per second with limits off (same N),
* the time from dropping one file to its KSeF number (daemon already running, online session),
* CPU seconds per invoice of the daemon process, and its peak RSS.

    .venv/bin/python benchmarks/daemon_outbox.py [--invoices 10000] [--skip-production]

Measured 2026-11-22 on the shared 2-core machine (other test runs in parallel), N = 10 000, after grouping
the batch path's commits and directory fsyncs (issue #5 performance):
    drain, production limits   80.5 s (124 invoices/s)
    drain, limits off          91.1 s (110 invoices/s; before: 230 s, 43 invoices/s)
    daemon CPU per invoice     7.9 ms (before: ~17.8 ms, measured at N = 2000)
    drop -> KSeF number        119 ms best, 122 ms median (one invoice, online session)
    peak RSS                   222 MB
What bounds it now: the per-invoice UPO downloads from the simulator (~30 ms each, 8 at a time) and the
local checks (XSD) at intake, ~2 ms per invoice.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import NIP, rusage_peak_rss_mb, start_simulator

from ksefd.config import load_config
from ksefd.daemon.service import serve
from ksefd.logs import configure_logging
from ksefd.samples import make_invoice, sample_bytes
from tests.support.ksef_auth import create_ksef_token


def write_config(folder: Path, base_url: str, token: str) -> Path:
    (folder / "acme.token").write_text(token)
    path = folder / "ksefd.toml"
    path.write_text(f'[ksef]\nenvironment = "test"\nbase_url = "{base_url}"\n\n[daemon]\ndata_dir = "data"\n'
                    'settle_seconds = 0\nrescan_interval_seconds = 5\nlog_level = "warning"\n\n'
                    '[[companies]]\nname = "acme"\nnip = "9999999999"\nreceive = false\ntoken_file = "acme.token"\n')
    return path


def drop_invoices(outbox: Path, count: int, prefix: str) -> None:
    outbox.mkdir(parents=True, exist_ok=True)
    template = sample_bytes("FA_3_Przyklad_1.xml")
    today = dt.datetime.now(dt.UTC).date()
    for n in range(count):
        data = make_invoice(template, number=f"{prefix}/{n}", seller_nip=NIP, buyer_nip="1111111111",
                            issue_date=today)
        (outbox / f"{prefix}-{n:05d}.xml.tmp").write_bytes(data)
        (outbox / f"{prefix}-{n:05d}.xml.tmp").rename(outbox / f"{prefix}-{n:05d}.xml")


async def drain(limits: str, count: int) -> tuple[float, float]:
    """Seconds to drain `count` invoices, and the daemon's CPU seconds for it."""
    proc, base_url = await start_simulator("--limits", limits)
    try:
        async with aiohttp.ClientSession() as http:
            token = await create_ksef_token(http, base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(write_config(Path(tmp), base_url, token))
            drop_invoices(config.companies[0].folders.outbox, count, limits.upper())
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            await serve(config, asyncio.Event(), once=True)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            sent = len(list(config.companies[0].folders.sent.glob("*.upo.xml")))
            if sent != count:
                raise RuntimeError(f"only {sent} of {count} invoices have a UPO")
        return elapsed, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    finally:
        proc.terminate()
        await proc.wait()


async def single_latency(samples: int = 5) -> list[float]:
    """Drop -> KSeF number in NAME.ksef.json, with the daemon running and its online session open."""
    proc, base_url = await start_simulator("--limits", "production")
    try:
        async with aiohttp.ClientSession() as http:
            token = await create_ksef_token(http, base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(write_config(Path(tmp), base_url, token))
            company = config.companies[0]
            company.folders.outbox.mkdir(parents=True, exist_ok=True)
            stop = asyncio.Event()
            daemon = asyncio.create_task(serve(config, stop))
            await asyncio.sleep(2)                      # started and logged in
            timings = []
            for n in range(samples):
                drop_invoices(company.folders.outbox, 1, f"ONE{n}")
                started = time.perf_counter()
                target = company.folders.sent / f"ONE{n}-00000.ksef.json"
                while not target.exists():  # noqa: ASYNC110 - a file appearing gives no event
                    await asyncio.sleep(0.005)
                timings.append(time.perf_counter() - started)
            stop.set()
            await daemon
        return timings
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--skip-production", action="store_true")
    args = parser.parse_args()
    configure_logging("json", 40)
    n = args.invoices
    if not args.skip_production:
        elapsed, _ = await drain("production", n)
        print(f"drain {n} invoices, production limits:  {elapsed:8.1f} s  ({n / elapsed:6.1f} invoices/s; "
              f"one batch session per 10 000, so the hourly limits are not the bound)")
    elapsed, cpu = await drain("off", n)
    print(f"drain {n} invoices, limits off:         {elapsed:8.1f} s  ({n / elapsed:6.1f} invoices/s)")
    print(f"daemon CPU per invoice (limits off):      {cpu / n * 1000:8.2f} ms")
    timings = await single_latency()
    print(f"drop -> KSeF number, one invoice:         {min(timings) * 1000:8.0f} ms best, "
          f"{sorted(timings)[len(timings) // 2] * 1000:.0f} ms median of {len(timings)}")
    peak = rusage_peak_rss_mb()
    print(f"daemon peak RSS (whole run):              {peak:8.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
