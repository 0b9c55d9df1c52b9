"""The crash campaign, reduced (issue #15; the full run is benchmarks/crash_campaign.py): the daemon, a real
`ksefd run` subprocess, is killed with SIGKILL at 8 random moments while two companies send to each other and
receive each other's invoices, and restarted at once each time (a systemd crash loop), with 429 bursts on.
Nothing is lost, nothing is accepted or delivered twice, and no request is sent into a rate-limit block."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.soak import crash_campaign


@pytest.mark.timeout(120)
async def test_crash_campaign_reduced(tmp_path: Path) -> None:
    report = await crash_campaign(tmp_path, per_company=60, kills=8, max_gap_s=1.2, limit_s=90)
    print("\n" + "\n".join(report.lines()))
    assert report.verdict.problems == []
    assert report.verdict.accepted == 120 and report.verdict.received == 120
    assert report.counts.during_block == 0 and report.counts.sim_tally["requestsDuringBlock"] == 0
    assert set(report.states) == {"done"}
