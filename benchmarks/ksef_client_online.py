"""The KSeF client against an in-process simulator: authentication time and online send throughput.

Authenticates with a self-signed certificate (XAdES via ksefd.ksef.xades) and with a KSeF token, then sends
invoices made from an official sample through `KsefClient` (one online session, rate limits off in the
simulator) and prints the latency per send and the sends per second, sequential and concurrent.

    .venv/bin/python benchmarks/ksef_client_online.py [--invoices 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ksefd.ksef.auth import AuthOptions, ContextIdentifier  # noqa: E402
from ksefd.ksef.client import KsefClient  # noqa: E402
from ksefd.ksef.credentials import CertificateCredentials, KsefToken  # noqa: E402
from ksefd.logs import configure_logging  # noqa: E402
from ksefd.sim.app import create_app  # noqa: E402
from ksefd.sim.config import SimConfig  # noqa: E402
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate  # noqa: E402

SAMPLE = (ROOT.parent / "shared" / "ksef" / "samples" / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
NIP = "9999999999"
FAST = AuthOptions(poll_first=0.005, poll_max=0.05)


def invoice(number: int) -> bytes:
    return SAMPLE.replace(b"<P_2>FV2026/02/150</P_2>", f"<P_2>FV/BENCH/{number}</P_2>".encode())


def report(label: str, latencies: list[float], wall: float) -> None:
    ordered = sorted(latencies)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    print(f"{label}: {len(latencies)} sends in {wall:.2f} s = {len(latencies) / wall:.1f}/s; "
          f"latency median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")


async def main(count: int, concurrency: int) -> None:
    server = TestServer(create_app(SimConfig(limits_profile="off")), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}/v2"
    try:
        async with aiohttp.ClientSession() as http, KsefClient("test", base_url=base, auth_options=FAST) as client:
            cert, key = self_signed_certificate(nip=NIP)
            started = time.perf_counter()
            await client.context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key)).authenticate()
            elapsed = (time.perf_counter() - started) * 1000
            print(f"XAdES authentication (challenge, sign, poll, redeem): {elapsed:.0f} ms")
            token = await create_ksef_token(http, base, NIP, ["InvoiceWrite", "InvoiceRead"])
            ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
            started = time.perf_counter()
            await ctx.authenticate()
            print(f"KSeF token authentication: {(time.perf_counter() - started) * 1000:.0f} ms")
            sender = ctx.online()
            started = time.perf_counter()
            await sender.open()
            print(f"online session open: {(time.perf_counter() - started) * 1000:.0f} ms")

            latencies: list[float] = []

            async def send(number: int) -> None:
                began = time.perf_counter()
                await sender.send(invoice(number))
                latencies.append(time.perf_counter() - began)

            wall = time.perf_counter()
            for n in range(count):
                await send(n)
            report("sequential", latencies, time.perf_counter() - wall)

            latencies.clear()
            gate = asyncio.Semaphore(concurrency)

            async def bounded(number: int) -> None:
                async with gate:
                    await send(number)

            wall = time.perf_counter()
            await asyncio.gather(*(bounded(count + n) for n in range(count)))
            report(f"concurrency {concurrency}", latencies, time.perf_counter() - wall)
            await ctx.close()
    finally:
        await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    asyncio.run(main(args.invoices, args.concurrency))
