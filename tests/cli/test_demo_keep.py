"""`ksefd demo --keep` (issue #14 points 6 and 7): on a terminal the demo says what it waits for during the
buyer's first inbox cycle (a countdown), ends with a "done" line, then leaves the simulator and the daemon
running with the config's path printed, until Ctrl+C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _read_until(fd: int, pattern: str, seen: list[str], deadline: float) -> str:
    while time.monotonic() < deadline:
        text = "".join(seen)
        if re.search(pattern, text):
            return text
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen.append(os.read(fd, 65536).decode("utf-8", "replace"))
            except OSError:       # the child closed the terminal
                break
    raise AssertionError(f"never saw {pattern!r} in:\n{''.join(seen)}")


@pytest.mark.timeout(240)
def test_demo_keep_counts_down_says_done_and_stays_up(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    errors = (tmp_path / "stderr.txt").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "ksefd", "demo", "--invoices", "2", "--keep", "--dir",
                                str(tmp_path)], stdout=slave, stderr=errors, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 200
        _read_until(master, r"Waiting for jan-kowalski's inbox: it asks KSeF for new invoices once a cycle "
                            r"\(every 1 min\)", seen, deadline)
        _read_until(master, r"\r  waiting for jan-kowalski's inbox: \d of 2 arrived, next cycle in +\d+ s", seen,
                    deadline)
        text = _read_until(master, r"Still running \(--keep\)[\s\S]*Ctrl\+C stops\.", seen, deadline)
        assert "2 of 2 invoices accepted by KSeF with a UPO; 2 of the 2" in text
        assert "Demo done." in text
        config = tmp_path / "ksefd.toml"
        assert "Still running (--keep): the simulator at http://127.0.0.1:" in text and f"  {config}\r\n" in text
        status = subprocess.run([sys.executable, "-m", "ksefd", "status", "-c", str(config), "--json"],
                                capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["running"] is True, status.stdout + status.stderr
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        os.close(master)
        errors.close()
    assert code == 0, (tmp_path / "stderr.txt").read_text()
