"""Simulator throughput: invoices accepted (202) and processed (final status) per second.

Starts `python -m ksefd sim --port 0 --limits off` in a subprocess, authenticates the way a user does
(KSeF token), opens one online session and sends N distinct invoices (variants of an official sample)
with a few requests in flight, then waits until every invoice has its verdict.

    .venv/bin/python benchmarks/sim_throughput.py [--invoices 500] [--concurrency 8] [--state]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ksef_auth import access_token  # noqa: E402
from tests.support.online_flow import Online  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "ksef" / "samples" / "invoices" / "FA_3_Przyklad_8.xml"
NIP = "9999999999"


async def start_simulator(state: Path | None) -> tuple[asyncio.subprocess.Process, str]:
    args = [sys.executable, "-m", "ksefd", "--log-format", "json", "sim", "--port", "0", "--limits", "off"]
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


async def run(count: int, concurrency: int, state: Path | None) -> None:
    proc, base_url = await start_simulator(state)
    template = SAMPLE.read_bytes()
    try:
        async with aiohttp.ClientSession() as http:
            online = Online(http, base_url, await access_token(http, base_url, NIP))
            await online.open()
            bodies = [online.keys.send_body(template.replace(b"FM2026/02/150", f"BENCH/{n}".encode()))
                      for n in range(count)]
            gate = asyncio.Semaphore(concurrency)

            async def send(body: dict[str, object]) -> None:
                async with gate, online.send_raw(body) as resp:
                    assert resp.status == 202, await resp.text()

            started = time.perf_counter()
            await asyncio.gather(*(send(b) for b in bodies))
            accepted_s = time.perf_counter() - started
            while True:
                status = await online.status()
                done = status["successfulInvoiceCount"] + status["failedInvoiceCount"]
                if done >= count:
                    break
                await asyncio.sleep(0.05)
            processed_s = time.perf_counter() - started
            assert status["successfulInvoiceCount"] == count, status
    finally:
        proc.terminate()
        await proc.wait()
    mode = f"SQLite state ({state})" if state else "in-memory state"
    print(f"{count} invoices, {concurrency} in flight, {mode}, {os.cpu_count()} CPUs")
    print(f"accepted (202):  {count / accepted_s:8.1f} invoices/s  ({accepted_s:.2f} s)")
    print(f"processed (200): {count / processed_s:8.1f} invoices/s  ({processed_s:.2f} s from the first send)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--state", action="store_true", help="run the simulator with a SQLite --state file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.invoices, args.concurrency, Path(tmp) / "sim.db" if args.state else None))


if __name__ == "__main__":
    main()
