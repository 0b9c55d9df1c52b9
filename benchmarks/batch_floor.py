"""The simulator's floor for a batch backlog: the least wall time `ksefd sim` needs to take N invoices by batch
and hand back every result and UPO, driven by a lean client that does nothing else (issue #16 goal 2).

Run in its own process by `peer_backlog.py --only big` (beside ksefd, each on a fresh simulator), or alone:

    .venv/bin/python benchmarks/batch_floor.py --base-url URL --token TOKEN --dir DIR [--sessions 4]

DIR/in holds the invoices. Before the clock starts: login and the archives (split into --sessions pieces of
even size, built and encrypted). Timed: every piece opened, uploaded and closed at once; then piece by piece,
in order: its status polled until processed (every 0.25 s, one session at a time: sessionMisc 10/s, 120/min,
PROTOCOL.md §7), its list read in pages of 1000, its UPOs fetched from their pre-signed URLs 8 at a time and
written to DIR/out (no fsync). Prints one JSON line: wall seconds, when the last piece was processed, this
driver's CPU ms. The simulator's CPU in the same window is read by the caller (/proc/PID/stat).
"""

# ruff: noqa: ASYNC110 - a benchmark driver: KSeF says when a session is processed only when asked

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from _common import NIP

from ksefd.ksef import BatchInvoice, BatchOptions, ContextIdentifier, KsefClient, KsefToken, prepare_batch_async
from ksefd.logs import configure_logging

UPO_AT_ONCE = 8
POLL_SECONDS = 0.25


async def floor(base_url: str, token: str, folder: Path, sessions: int) -> dict[str, float]:
    files = sorted((folder / "in").glob("*.xml"))
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    async with KsefClient("test", base_url=base_url) as client:
        ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
        await ctx.authenticate()
        sender = ctx.batch(options=BatchOptions(invoice_page_size=1000))
        with tempfile.TemporaryDirectory(dir=folder) as work:
            size = -(-len(files) // sessions)
            pieces = [files[start:start + size] for start in range(0, len(files), size)]
            prepared = [await prepare_batch_async([BatchInvoice(p.name, p) for p in piece], Path(work) / str(n))
                        for n, piece in enumerate(pieces)]
            cpu0, started = time.process_time(), time.perf_counter()

            async def send(n: int) -> str:
                opened = await sender.open(prepared[n])
                await sender.upload(prepared[n], opened)
                await sender.close(opened.reference_number)
                return opened.reference_number

            references = await asyncio.gather(*(send(n) for n in range(len(prepared))))
            closed = time.perf_counter() - started
            processed = 0.0
            gate = asyncio.Semaphore(UPO_AT_ONCE)

            async def upo(name: str, url: str) -> None:
                async with gate:
                    data = await ctx.sessions.download_presigned_upo(url)
                (out / f"{name}.upo.xml").write_bytes(data)

            saved = 0
            for reference in references:
                while (await ctx.sessions.status(reference)).status.code < 200:
                    await asyncio.sleep(POLL_SECONDS)
                processed = time.perf_counter() - started
                async for page in ctx.sessions.invoice_pages(reference, page_size=1000):
                    await asyncio.gather(*(upo(str(i.invoice_file_name), str(i.upo_download_url))
                                           for i in page.invoices))
                    saved += len(page.invoices)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu0
            for batch in prepared:
                batch.cleanup()
    if saved != len(files):
        raise SystemExit(f"only {saved} of {len(files)} UPOs")
    return {"wall": wall, "closed": closed, "processed": processed, "cpu_ms": cpu * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args()
    configure_logging("json", logging.INFO)      # stderr: the caller counts ksef.rate_limited in it
    print(json.dumps(asyncio.run(floor(args.base_url, args.token, args.dir, args.sessions))))


if __name__ == "__main__":
    main()
