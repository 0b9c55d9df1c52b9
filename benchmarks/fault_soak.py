"""The fault soak (issue #15): the daemon sends N invoices and receives the same N (two companies, each the
other's customer) while the simulator injects 10 % 5xx (half as HTML pages), 5 % dropped connections, 429
bursts, an outage window, 21184 session unavailability, session expiry, slow UPOs and late commits behind
the HWM (tests/support/soak.py). Prints wall time, requests per invoice, faults, 429s and retries, and fails
unless every invoice was accepted exactly once with its UPO and delivered once to the buyer's inbox.

    .venv/bin/python benchmarks/fault_soak.py [--invoices 2000] [--seed 1]

Measured 2026-12-06 on the shared 2-core machine, defaults (2 000 sent, the same 2 000 received):
    69.8 s wall (2 daemon runs); 2 452 requests = 0.61 per invoice sent or received; injected 225 5xx,
    91 dropped connections, 23 outage answers; 7 answers 429 (bursts), 0 requests during a block;
    346 answers that forced a retry; every invoice accepted once with its UPO, both inboxes complete.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ksefd.logs import configure_logging
from tests.support.soak import soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invoices", type=int, default=2000, help="sent (and received) in all, split over 2 companies")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--outage-at", type=float, default=20.0, help="seconds after the start")
    parser.add_argument("--outage-for", type=float, default=10.0)
    args = parser.parse_args()
    configure_logging("json", logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(soak(Path(tmp), args.invoices // 2, seed=args.seed, outage_at=args.outage_at,
                                  outage_for=args.outage_for, limit_s=3600))
    print("\n".join(report.lines()))
    quiet = report.counts.during_block == 0 and not report.counts.sim_tally.get("requestsDuringBlock")
    return 0 if not report.verdict.problems and quiet else 1


if __name__ == "__main__":
    sys.exit(main())
