"""Inbox backfill (issue #6): how many export calls, how long and how much memory the daemon needs to
receive a backlog of N incoming invoices (default 50 000) into an empty inbox.

Starts `ksefd sim` (production rate limits, the real 10 000-invoice package cap, HWM 1 s behind now) in a
subprocess, has a seller company send N distinct invoices to the buyer in batch sessions, then runs the
daemon for the buyer (`python -m ksefd run --once`, receive only, backfill from yesterday) in its own
subprocess and measures it: export calls (the minimum is ceil(N / 10 000) + 1: every package after the
first repeats its boundary invoice, PROTOCOL.md §6.4), wall time, and peak RSS of the daemon process.

    .venv/bin/python benchmarks/inbox_backfill.py [--invoices 50000] [--layout flat|year-month]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import os
import resource
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
from _common import ROOT, rusage_peak_rss_mb, start_simulator

from ksefd.clock import SystemClock, warsaw_date
from ksefd.logs import configure_logging
from ksefd.store import Store
from tests.daemon.inbox_support import BUYER_NIP, send_batches
from tests.support.ksef_auth import create_ksef_token

PACKAGE_CAP = 10_000


def write_config(folder: Path, base_url: str, layout: str) -> Path:
    yesterday = warsaw_date(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    path = folder / "ksefd.toml"
    path.write_text(textwrap.dedent(f"""
        [ksef]
        base_url = "{base_url}"
        [daemon]
        data_dir = "data"
        log_level = "warning"
        [[companies]]
        name = "buyer"
        nip = "{BUYER_NIP}"
        send = false
        token_file = "buyer.token"
        [companies.receiving]
        backfill_from = {yesterday}
        inbox_layout = "{layout}"
        reconcile = false
        """))
    return path


async def run(count: int, layout: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ksefd-inbox-bench-") as name:
        folder = Path(name)
        sim, base_url = await start_simulator("--limits", "production", "--hwm-lag", "1", log=folder / "sim.log")
        try:
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                await send_batches(http, base_url, SystemClock(), folder, count)
                seeded = time.monotonic() - started
                (folder / "buyer.token").write_text(await create_ksef_token(http, base_url, BUYER_NIP,
                                                                            ["InvoiceRead"]))
            await asyncio.sleep(1.5)                       # the HWM passes the last invoice
            config = write_config(folder, base_url, layout)
            started = time.monotonic()
            with (folder / "daemon.log").open("wb") as sink:
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ksefd", "--log-format", "json", "run", "--once", "-c", str(config),
                    cwd=ROOT, stdout=sink, stderr=sink)
                code = await daemon.wait()
            wall = time.monotonic() - started
            peak_mb = rusage_peak_rss_mb(resource.RUSAGE_CHILDREN)   # only the daemon has ended
            if code != 0:
                raise RuntimeError(f"the daemon exited with {code}:\n{(folder / 'daemon.log').read_text()[-3000:]}")
            await report(folder, count, seeded, wall, peak_mb)
        finally:
            sim.terminate()
            await sim.wait()


async def report(folder: Path, count: int, seeded: float, wall: float, peak_mb: float) -> None:
    async with await Store.open(folder / "data" / "state.sqlite3") as store:
        delivered = await store.inbox.delivered_count("buyer")
        status = json.loads(await store.kv.get("inbox_status", "buyer") or "{}")
    metrics = status.get("metrics", {})
    files = sum(1 for p in (folder / "data" / "buyer" / "inbox").rglob("*.xml"))
    minimum = math.ceil(count / PACKAGE_CAP) + 1
    print(f"invoices sent (batch sessions)  {count} in {seeded:.1f} s")
    print(f"delivered to the inbox          {delivered} ({files} XML files)")
    print(f"export calls                    {metrics.get('exports')} (minimum ceil(N/10 000) + 1 = {minimum}; "
          f"{metrics.get('packages_truncated')} truncated packages)")
    print(f"daemon wall time                {wall:.1f} s  ({count / wall:.0f} invoices/s, process start to exit)")
    print(f"daemon peak RSS                 {peak_mb:.0f} MiB")
    print(f"machine                         {os.cpu_count()} CPUs")
    if delivered != count or files != count:
        raise SystemExit("not every invoice arrived exactly once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invoices", type=int, default=50_000)
    parser.add_argument("--layout", choices=["flat", "year-month"], default="flat")
    args = parser.parse_args()
    configure_logging("console", logging.WARNING)
    asyncio.run(run(args.invoices, args.layout))


if __name__ == "__main__":
    main()
