"""How long `check_invoice` takes on the official samples (issue #5 item 3: checks before any quota).

    .venv/bin/python benchmarks/invoice_check.py [--rounds N] [--threads T]

Prints the one-off schema compile time, then per sample the mean time of one full check (hygiene,
parse, XSD, facts, SHA-256), then the throughput of T threads sharing the serialised validator.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ksefd.invoice import check_invoice, fa3_schema

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "ksef" / "samples" / "invoices"
TODAY = dt.date(2026, 11, 22)


def one(data: bytes) -> None:
    check_invoice(data, file_name="x.xml", company_nip="9999999999", today=TODAY)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    started = time.perf_counter()
    fa3_schema()
    print(f"schema compile (once per process): {(time.perf_counter() - started) * 1000:.1f} ms")
    files = sorted(SAMPLES.glob("*.xml"))
    means = []
    for path in files:
        data = path.read_bytes()
        one(data)
        started = time.perf_counter()
        for _ in range(args.rounds):
            one(data)
        mean = (time.perf_counter() - started) / args.rounds * 1000
        means.append(mean)
        print(f"{path.name:24} {len(data):6} bytes  {mean:6.3f} ms per check")
    print(f"median over samples: {statistics.median(means):.3f} ms per check")
    datas = [p.read_bytes() for p in files] * (args.rounds // 5)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, datas))
    elapsed = time.perf_counter() - started
    print(f"{args.threads} threads: {len(datas) / elapsed:,.0f} checks per second")


if __name__ == "__main__":
    main()
