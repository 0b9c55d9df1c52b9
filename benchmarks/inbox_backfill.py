"""Inbox backfill (issue #6, issue #16 goal 2): how many export calls, how long, how much CPU and memory
the daemon needs to receive a backlog of N incoming invoices (default 50 000) into an empty inbox.

Starts `ksefd sim` (production rate limits, the real 10 000-invoice package cap, HWM 1 s behind now) in a
subprocess, has a seller company send N distinct invoices to the buyer in batch sessions (the seller's
own context gets TEST rate limits high enough for seeding, POST /testdata/rate-limits; the buyer keeps
production limits), then runs the daemon for the buyer (`python -m ksefd run --once`, receive only,
backfill from yesterday) in its own process and measures that process: export calls (the minimum is
ceil(N / 10 000) + 1: every package after the first repeats its boundary invoice, PROTOCOL.md §6.4), wall
time, CPU seconds and peak RSS (the kernel's high-water mark of the daemon process, VmHWM), and the
simulator's CPU meanwhile. Goal (issue #16): 50 000 in <= 30 s at <= 100 MB.

The simulator's floor, measured in the same run right after the daemon: a bare client walks the same
windows (export, status polled every 0.2 s, every part downloaded and dropped, no decryption, no files):
the time the simulator needs to build and serve the packages. The daemon's wall time is printed as a
ratio to it. The import floor is the RSS of a process that only imports what the daemon imports.

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
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
from _common import ROOT, start_simulator

from ksefd.clock import WARSAW, SystemClock, warsaw_date
from ksefd.ksef import ContextIdentifier, ExportOptions, KsefClient, next_checkpoint, query_filters
from ksefd.logs import configure_logging
from ksefd.sim.ratelimits import OVERRIDABLE
from ksefd.store import Store
from tests.daemon.inbox_support import BUYER_NIP, SELLER_NIP, send_batches
from tests.support.ksef_auth import create_ksef_token, owner_login

PACKAGE_CAP = 10_000


def write_config(folder: Path, base_url: str, layout: str) -> tuple[Path, dt.datetime]:
    """The daemon's config, and where its first window starts (00:00 Polish time yesterday)."""
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
    return path, dt.datetime.combine(yesterday, dt.time(0), tzinfo=WARSAW).astimezone(dt.UTC)


async def lift_seller_limits(http: aiohttp.ClientSession, base_url: str) -> None:
    """Seeding is not what is measured: the seller's context may list its sessions' invoices freely."""
    tokens = await owner_login(http, base_url, SELLER_NIP)
    high = {"perSecond": 1000, "perMinute": 100_000, "perHour": 1_000_000}
    async with http.post(f"{base_url}/testdata/rate-limits", json={"rateLimits": {g: high for g in OVERRIDABLE}},
                         headers={"Authorization": f"Bearer {tokens.access_token}"}) as resp:
        resp.raise_for_status()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The daemon is started by this small launcher, which reports its child's exact peak RSS and CPU: the
# benchmark itself holds hundreds of MB after seeding, and a child forked from it carries that into its
# ru_maxrss (Linux records the pre-exec high-water mark), which is how 227 MiB was once reported.
LAUNCHER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "user": usage.ru_utime, "sys": usage.ru_stime, "peak": usage.ru_maxrss / 1024}, out)
"""


async def run_daemon(folder: Path, config: Path, sim_pid: int) -> dict[str, float]:
    """`ksefd run --once` in its own process: wall, CPU, peak RSS; the simulator's CPU meanwhile."""
    sim_cpu = cpu_seconds(sim_pid)
    result = folder / "daemon-usage.json"
    started = time.monotonic()
    with (folder / "daemon.log").open("wb") as sink:
        launcher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCHER, str(result),
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "--once", "-c", str(config),
            cwd=ROOT, stdout=sink, stderr=sink)
        await launcher.wait()
    wall = time.monotonic() - started
    usage = json.loads(result.read_text())
    if usage["code"] != 0:
        tail = (folder / "daemon.log").read_text()[-3000:]
        raise RuntimeError(f"the daemon exited with {usage['code']}:\n{tail}")
    return {"wall": wall, "cpu": usage["user"] + usage["sys"], "user": usage["user"], "sys": usage["sys"],
            "peak": usage["peak"], "sim_cpu": cpu_seconds(sim_pid) - sim_cpu}


async def simulator_floor(base_url: str, token: str, date_from: dt.datetime) -> tuple[float, int]:
    """The same windows as the daemon, exported and downloaded by a bare client: (seconds, packages)."""
    options = ExportOptions(poll_first=0.2, poll_factor=1.0, poll_max=0.2)
    client = KsefClient("test", base_url=base_url)
    try:
        context = client.context(ContextIdentifier.nip(BUYER_NIP), token)
        exporter = context.exporter(options)
        await context.auth.access_token()                   # logged in before the clock starts
        started, packages, window = time.monotonic(), 0, date_from.isoformat()
        while True:
            filters = query_filters("Subject2", window, None, now=dt.datetime.now(dt.UTC))
            export = await exporter.start(filters)
            status = await exporter.wait(export.reference_number)
            assert status.package is not None
            for part in status.package.parts:
                await context.auth.transport.presigned(part.method or "GET", part.url, expect=(200,))
            packages += 1
            if not status.package.is_truncated:
                return time.monotonic() - started, packages
            window = next_checkpoint(status.package.as_mapping())
    finally:
        await client.close()


async def import_floor_mb() -> float:
    """The RSS of a process that only imports what `ksefd run` imports (no work at all)."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import ksefd.cli, ksefd.daemon.service, pathlib; print(next(line.split()[1] for line "
        "in pathlib.Path('/proc/self/status').read_text().splitlines() if line.startswith('VmHWM:')))",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await probe.communicate()
    return int(out) / 1024


async def run(count: int, layout: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ksefd-inbox-bench-") as name:
        folder = Path(name)
        sim, base_url = await start_simulator("--limits", "production", "--hwm-lag", "1", log=folder / "sim.log")
        try:
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                await lift_seller_limits(http, base_url)
                await send_batches(http, base_url, SystemClock(), folder, count)
                seeded = time.monotonic() - started
                token = await create_ksef_token(http, base_url, BUYER_NIP, ["InvoiceRead"])
                (folder / "buyer.token").write_text(token)
            await asyncio.sleep(1.5)                       # the HWM passes the last invoice
            config, date_from = write_config(folder, base_url, layout)
            load = os.getloadavg()
            daemon = await run_daemon(folder, config, sim.pid)
            floor, packages = await simulator_floor(base_url, token, date_from)
            await report(folder, count, seeded, daemon, floor, packages, await import_floor_mb(), load)
        finally:
            sim.terminate()
            await sim.wait()


async def report(folder: Path, count: int, seeded: float, daemon: dict[str, float], floor: float, packages: int,
                 imports_mb: float, load: tuple[float, float, float]) -> None:
    async with await Store.open(folder / "data" / "state.sqlite3") as store:
        delivered = await store.inbox.delivered_count("buyer")
        status = json.loads(await store.kv.get("inbox_status", "buyer") or "{}")
    metrics = status.get("metrics", {})
    files = sum(1 for p in (folder / "data" / "buyer" / "inbox").rglob("*.xml"))
    minimum = math.ceil(count / PACKAGE_CAP) + 1
    wall = daemon["wall"]
    print(f"invoices sent (batch sessions)  {count} in {seeded:.1f} s")
    print(f"delivered to the inbox          {delivered} ({files} XML files)")
    print(f"export calls                    {metrics.get('exports')} (minimum ceil(N/10 000) + 1 = {minimum}; "
          f"{metrics.get('packages_truncated')} truncated packages)")
    print(f"daemon wall time                {wall:.1f} s  ({count / wall:.0f} invoices/s, process start to exit)")
    print(f"daemon CPU                      {daemon['cpu']:.1f} s (user {daemon['user']:.1f}, sys {daemon['sys']:.1f}; "
          f"{daemon['cpu'] / count * 1000:.2f} ms per invoice)")
    print(f"daemon peak RSS                 {daemon['peak']:.0f} MiB = {daemon['peak'] * 1.048576:.0f} MB (its VmHWM; "
          f"a process that only imports the same modules: {imports_mb:.0f} MiB)")
    print(f"simulator CPU meanwhile         {daemon['sim_cpu']:.1f} s")
    print(f"simulator floor                 {floor:.1f} s for {packages} packages (export, poll 0.2 s, download)")
    print(f"daemon / floor                  {wall / floor:.2f}x")
    print(f"load average at start           {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; machine {os.cpu_count()} CPUs")
    print("goal (issue #16)                50 000 in <= 30 s, peak RSS <= 100 MB")
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
