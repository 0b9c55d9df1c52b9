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
        # Polish, the default: "waiting for jan-kowalski's inbox ... (every 1 min)", then a countdown.
        _read_until(master, r"Czekam na skrzynkę odbiorczą jan-kowalski: pyta ona KSeF o nowe faktury raz na cykl "
                            r"\(co 1 min\)", seen, deadline)
        _read_until(master, r"\r  czekam na skrzynkę odbiorczą jan-kowalski: dotarło \d z 2, następny cykl za +\d+ s",
                    seen, deadline)
        text = _read_until(master, r"Nadal działają \(--keep\)[\s\S]*Ctrl\+C zatrzymuje\.", seen, deadline)
        assert "KSeF przyjął 2 z 2 faktur, każdą z UPO; 2 z 2" in text
        assert "Demo zakończone." in text                               # "Demo done."
        # Each invoice's state in Polish words (the codes stay English in --json and the state database).
        assert re.search(r"demo-0001-\S+ +gotowa +KSeF ", text)
        config = tmp_path / "ksefd.toml"
        assert "Nadal działają (--keep): symulator pod adresem http://127.0.0.1:" in text
        assert f"  {config}\r\n" in text
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
