"""What an idle daemon never uses is not imported at start (issue #16 point 4: ~80 MB for 100 companies):
holidays (offline deadlines), segno (QR codes), signxml (certificate logins), prometheus_client ([daemon] http),
watchfiles (Linux watches outboxes with inotify). Each is imported where it is first needed."""

from __future__ import annotations

import subprocess
import sys

LAZY = ("holidays", "segno", "signxml", "prometheus_client", "watchfiles")


def test_starting_the_daemon_imports_none_of_the_heavy_optional_parts() -> None:
    code = ("import sys, ksefd.cli, ksefd.daemon.service, ksefd.invoice; ksefd.invoice.load_schema(); "
            f"print(','.join(m for m in {LAZY!r} if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    expected = "watchfiles" if sys.platform != "linux" else ""
    assert found in ("", expected), f"imported at start: {found}"


def test_each_is_there_when_needed() -> None:
    import datetime as dt

    from ksefd.clock import is_business_day
    from ksefd.ksef.qr import qr_svg

    assert not is_business_day(dt.date(2026, 11, 11))          # Independence Day: holidays was imported
    assert "<svg" in qr_svg("https://qr-test.ksef.mf.gov.pl/invoice/x", "OFFLINE")
