"""What the benchmarks share: the repository on sys.path, `ksefd sim` in a subprocess, peak RSS.

A benchmark runs as a script (`.venv/bin/python benchmarks/NAME.py`), so this folder is first on sys.path
and `import _common` finds this module; importing it puts the repository root there too, so the imports of
`ksefd` and `tests.support` that follow it work without installing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLES = ROOT.parent / "shared" / "ksef" / "samples" / "invoices"
NIP = "9999999999"

_BASE_URL = re.compile(r"(http://\S+/v2)")


async def start_simulator(*options: str, state: Path | None = None,
                          log: Path | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """`python -m ksefd sim --port 0 OPTIONS` (JSON logs) and its base URL (`http://.../v2`).

    `state`: a SQLite --state file instead of in-memory state. `log`: the simulator's stdout and stderr go
    to this file (nobody has to keep reading a pipe, and a failed start shows why); without it stdout is a
    pipe read until the URL appears and stderr is discarded.
    """
    args = [sys.executable, "-m", "ksefd", "--log-format", "json", "sim", "--port", "0", *options]
    if state is not None:
        args += ["--state", str(state)]
    if log is not None:
        return await _start_logging_to(log, args)
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("the simulator exited before it was ready")
        found = _BASE_URL.search(line)
        if found:
            return proc, found.group(1)


async def _start_logging_to(log: Path, args: list[str]) -> tuple[asyncio.subprocess.Process, str]:
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=sink, stderr=sink)
    for _ in range(300):
        found = _BASE_URL.search(await asyncio.to_thread(log.read_text, errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    raise RuntimeError(f"the simulator did not start:\n{text[-2000:]}")


def add_state_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", action="store_true", help="run the simulator with a SQLite --state file")


@contextlib.contextmanager
def sim_state(wanted: bool) -> Iterator[Path | None]:
    """A --state file in a temporary folder removed afterwards if `wanted`; None (in-memory state) if not."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "sim.db" if wanted else None


def state_mode(state: Path | None) -> str:
    return f"SQLite state ({state})" if state else "in-memory state"


def process_peak_rss_mb(pid: int) -> float:
    """Peak RSS of a running process (Linux /proc VmHWM), e.g. the simulator's before it is stopped."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rusage_peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak RSS of this process (RUSAGE_SELF) or of its largest ended child (RUSAGE_CHILDREN)."""
    return resource.getrusage(who).ru_maxrss / 1024          # Linux reports KiB
