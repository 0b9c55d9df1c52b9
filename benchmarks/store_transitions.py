"""What synchronous=FULL costs: state transitions per second in the SQLite store, one commit each
and grouped in one commit (InvoiceRepo.transition_many).

    .venv/bin/python benchmarks/store_transitions.py [--invoices N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from ksefd.store import InvoiceState, Store

S = InvoiceState


async def run(count: int, directory: Path) -> None:
    async with await Store.open(directory / "bench.sqlite3") as store:
        started = time.perf_counter()
        ids = [(await store.invoices.add("acme", f"FV{i}.xml", f"{i:044d}", 1000)).id for i in range(count)]
        added = time.perf_counter() - started
        started = time.perf_counter()
        for invoice_id in ids:
            await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
        single = time.perf_counter() - started
        started = time.perf_counter()
        await store.invoices.transition_many(ids, S.CHECKED, S.QUEUED)
        grouped = time.perf_counter() - started
    print(f"add (one commit each):          {count / added:8,.0f} per second")
    print(f"transition (one commit each):   {count / single:8,.0f} per second ({single / count * 1000:.2f} ms each)")
    print(f"transition_many (one commit):   {count / grouped:8,.0f} per second")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the database (default: a temp dir)")
    args = parser.parse_args()
    if args.dir:
        asyncio.run(run(args.invoices, args.dir))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.invoices, Path(tmp)))


if __name__ == "__main__":
    main()
