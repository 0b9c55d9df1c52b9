"""`ksefd demo` end to end: a real subprocess, as a newcomer runs it (README's first command)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(240)
def test_demo_sends_invoices_and_the_buyer_receives_them(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ksefd", "demo", "--invoices", "3", "--once", "--language", "en",
                             "--dir", str(tmp_path)], capture_output=True, text=True, timeout=230,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 invoices accepted by KSeF with a UPO" in result.stdout
    assert "3 of the 3 addressed to NIP 1111111111 delivered" in result.stdout
    # The credential advice in the reader's words, not the daemon's English log line beside the live summary.
    assert "WARNING abc-agd logs in with a KSeF token: token login end" in result.stdout
    assert "credentials.expiring" not in result.stdout + result.stderr
    sent = tmp_path / "data" / "abc-agd" / "sent"
    numbers = set()
    for receipt in sorted(sent.glob("*.ksef.json")):
        info = json.loads(receipt.read_text("utf-8"))
        assert re.fullmatch(r"9999999999-\d{8}-[0-9A-F]{12}-[0-9A-F]{2}", info["ksefNumber"])
        assert (sent / receipt.name.replace(".ksef.json", ".upo.xml")).read_bytes().startswith(b"<?xml")
        numbers.add(info["ksefNumber"])
    assert len(numbers) == 3
    inbox = tmp_path / "data" / "jan-kowalski" / "inbox"
    assert {p.stem for p in inbox.glob("*.xml")} == numbers
    status = subprocess.run([sys.executable, "-m", "ksefd", "status", "-c", str(tmp_path / "ksefd.toml"), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    seller = next(c for c in json.loads(status.stdout)["companies"] if c["name"] == "abc-agd")
    assert seller["accepted_total"] == 3 and seller["rejected_total"] == 0


@pytest.mark.timeout(200)
def test_demo_outage_issues_offline_then_sends_with_offline_mode(tmp_path: Path) -> None:
    """And waits for the buyer's inbox after the outage, as the plain demo does (issue #14 point 7): the
    summary reports what was delivered, not 0 because the demo ended before the buyer asked KSeF again."""
    result = subprocess.run([sys.executable, "-m", "ksefd", "demo", "--invoices", "2", "--once", "--outage", "5",
                             "--language", "en", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=190,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KSeF FAILURE announced for 5 s" in result.stdout and "2 of 2 invoices accepted" in result.stdout
    assert result.stdout.count("KOD I + KOD II") == 2
    assert "Waiting for jan-kowalski's inbox" in result.stdout
    assert "2 of the 2 addressed to NIP 1111111111 delivered to jan-kowalski's inbox" in result.stdout
    seller = tmp_path / "data" / "abc-agd"
    for offline in sorted((seller / "offline").glob("*.offline.json")):
        info = json.loads(offline.read_text("utf-8"))
        assert info["mode"] == "failure" and info["kod2"]["label"] == "CERTYFIKAT" and info["ksefNumber"]
        receipt = json.loads((seller / "sent" / offline.name.replace(".offline.json", ".ksef.json")).read_text())
        assert receipt["invoicingMode"] == "Offline" and receipt["offlineMode"] is True
