"""The crash campaign (issue #15): SIGKILL the daemon (a real `ksefd run` subprocess) at random moments while
two companies send to each other and receive each other's invoices, restarting it at once each time (a
systemd crash loop), with 429 bursts on (tests/support/soak.py). Prints the figures and fails unless nothing
was lost, nothing accepted or delivered twice, and no request was sent into a rate-limit block.

    .venv/bin/python benchmarks/crash_campaign.py [--kills 50] [--invoices 600] [--seed 15] [--limit 900]

Every start runs an inbox cycle, and KSeF allows 20 exports an hour (PROTOCOL.md §6.4, §7; the daemon keeps
that budget across restarts): when more than 20 of the restarts get as far as an export, the inbox waits for
the hour to pass, and the campaign reports what was still missing at --limit.

Measured 2026-12-06 on the shared 2-core machine (after merging main's durable rate-limit blocks), defaults:
    50 SIGKILLs; sent 600, received 600 in 76.4 s; 1 365 requests; 10 answers 429 (bursts), 0 requests during
    a block (the simulator's tally agrees: requestsDuringBlock 0, longest Retry-After 26 s); no second
    submission; every invoice DONE. Before that merge, the same campaign drove the simulator's "other" group
    (GET /limits/context at each start) into blocks that escalated to 3 600 s.
Stop it with Ctrl-C, not SIGTERM to this process alone: its daemons are its children.
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
from tests.support.soak import crash_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--invoices", type=int, default=600, help="sent (and received) in all, over 2 companies")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (the daemon's log included)")
    parser.add_argument("--limit", type=float, default=900, help="seconds before the campaign gives up")
    args = parser.parse_args()
    configure_logging("json", logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(crash_campaign(folder, args.invoices // 2, args.kills, seed=args.seed,
                                           limit_s=args.limit))
    print("\n".join(report.lines()))
    quiet = report.counts.during_block == 0 and not report.counts.sim_tally.get("requestsDuringBlock")
    return 0 if not report.verdict.problems and quiet else 1


if __name__ == "__main__":
    sys.exit(main())
