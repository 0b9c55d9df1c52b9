"""The fault soak, reduced (issue #15; the full run is benchmarks/fault_soak.py): 100 invoices sent and the
same 100 received while the simulator injects 5xx (half HTML), dropped connections, an outage window, 21184,
session expiry, slow UPOs, late commits and 429 bursts. Each invoice is accepted exactly once with its UPO,
each is delivered once to the buyer's inbox, and no request is sent into a rate-limit block."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.soak import soak


@pytest.mark.timeout(180)
async def test_fault_soak_reduced(tmp_path: Path) -> None:
    report = await soak(tmp_path, per_company=50, limit_s=150)
    print("\n" + "\n".join(report.lines()))
    assert report.verdict.problems == []
    assert report.verdict.accepted == 100 and report.verdict.received == 100
    assert report.counts.during_block == 0 and report.counts.sim_tally["requestsDuringBlock"] == 0
    assert report.counts.by_fault["5xx"] and report.counts.by_fault["drop"] and report.counts.by_fault["outage"]
    assert report.counts.too_many > 0                   # the bursts happened, and were waited out
