"""Simulator throughput: invoices accepted (202) and processed (final status) per second.

Starts `python -m ksefd sim --port 0 --limits off` in a subprocess, authenticates the way a user does
(KSeF token), opens one online session and sends N distinct invoices (variants of an official sample)
with a few requests in flight, then waits until every invoice has its verdict. Also prints the simulator's
own CPU per invoice over that window (/proc/PID/stat), the figure issue #16 follows for the online path.

    .venv/bin/python benchmarks/sim_throughput.py [--invoices 500] [--concurrency 8] [--state]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import aiohttp
from _common import NIP, SAMPLES, add_state_option, sim_state, start_simulator, state_mode

from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online

SAMPLE = SAMPLES / "FA_3_Przyklad_8.xml"


def sim_cpu(pid: int) -> float:
    """The simulator's user + system CPU seconds so far (/proc/PID/stat, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(count: int, concurrency: int, state: Path | None) -> None:
    proc, base_url = await start_simulator("--limits", "off", state=state)
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

            cpu0, started = sim_cpu(proc.pid), time.perf_counter()
            await asyncio.gather(*(send(b) for b in bodies))
            accepted_s = time.perf_counter() - started
            while True:
                status = await online.status()
                done = status["successfulInvoiceCount"] + status["failedInvoiceCount"]
                if done >= count:
                    break
                await asyncio.sleep(0.05)
            processed_s = time.perf_counter() - started
            cpu_s = sim_cpu(proc.pid) - cpu0
            assert status["successfulInvoiceCount"] == count, status
    finally:
        proc.terminate()
        await proc.wait()
    print(f"{count} invoices, {concurrency} in flight, {state_mode(state)}, {os.cpu_count()} CPUs")
    print(f"accepted (202):  {count / accepted_s:8.1f} invoices/s  ({accepted_s:.2f} s)")
    print(f"processed (200): {count / processed_s:8.1f} invoices/s  ({processed_s:.2f} s from the first send)")
    print(f"simulator CPU:   {cpu_s * 1000 / count:8.2f} ms per invoice  (load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    add_state_option(parser)
    args = parser.parse_args()
    with sim_state(args.state) as state:
        asyncio.run(run(args.invoices, args.concurrency, state))


if __name__ == "__main__":
    main()
