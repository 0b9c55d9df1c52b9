"""What a durable rate-limit grant costs (issue #10): every grant is committed (synchronous=NORMAL, no fsync)
before its request is sent. One caller after another pays one small transaction per grant; many callers at
once share transactions (GroupCommit). Limits are off here, so only the journal is measured.

    .venv/bin/python benchmarks/limiter_journal.py [--grants N] [--callers N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

from ksefd.ksef.ratelimit import PRODUCTION_LIMITS, GroupLimits, RateLimiter
from ksefd.store import Store

UNLIMITED = {group: GroupLimits(None, None, None) for group in PRODUCTION_LIMITS}


async def run(count: int, callers: int, directory: Path) -> None:
    async with await Store.open(directory / "bench.sqlite3") as store:
        memory = RateLimiter(UNLIMITED)
        started = time.perf_counter()
        for i in range(count):
            memory.answered(await memory.acquire(f"Nip:{i % 50:010d}", "invoiceSend"))
        in_memory = time.perf_counter() - started

        limiter = RateLimiter(UNLIMITED, journal=store.rate_limits)
        await limiter.load()
        started = time.perf_counter()
        for i in range(count):
            limiter.answered(await limiter.acquire(f"Nip:{i % 50:010d}", "invoiceSend"))
        one_by_one = time.perf_counter() - started
        before = limiter.transactions

        async def caller(n: int) -> None:
            for _ in range(count // callers):
                limiter.answered(await limiter.acquire(f"Nip:{n:010d}", "invoiceStatus"))

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        together = time.perf_counter() - started
        shared = limiter.transactions - before
        await limiter.close()
    print(f"in memory only:                 {count / in_memory:9,.0f} grants per second")
    print(f"journal, one caller at a time:  {count / one_by_one:9,.0f} grants per second "
          f"({one_by_one / count * 1000:.3f} ms each, one transaction each)")
    print(f"journal, {callers:3d} callers at once:  {count / together:9,.0f} grants per second "
          f"({count // callers * callers} grants in {shared} transactions)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grants", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the database (default: a temp dir)")
    args = parser.parse_args()
    if args.dir:
        asyncio.run(run(args.grants, args.callers, args.dir))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.grants, args.callers, Path(tmp)))


if __name__ == "__main__":
    main()
