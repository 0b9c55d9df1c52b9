"""The bad-input corpus (issue #15), dropped all at once into one company's outbox and run through the real
daemon (`ksefd run --once`, a subprocess) against the simulator: every case of manifest.csv ends as the
manifest says (sent with its UPO, rejected with its error code, ignored, or left with an error beside it),
and no entry stops the others or the daemon. When the tests run as root the daemon runs as `nobody`, as a
service user would, so that a file it cannot read is really unreadable to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.sim.config import SimConfig
from tests.corpus.generate import Case, cases, make_entry
from tests.daemon.support import ROOT, SELLER, invoice_rows, load, sim_records, token_file, write_config
from tests.daemon.test_odd_entries import _as_other_user, _give, open_folder  # noqa: F401 (a fixture)

CASES = cases()


def test_the_corpus_has_at_least_sixty_kinds() -> None:
    assert len(CASES) >= 60 and len({c.case for c in CASES}) == len(CASES)
    assert {c.outcome for c in CASES} <= {"sent", "answered", "rejected", "ignored", "stays"}
    assert all(c.code for c in CASES if c.outcome in ("rejected", "stays"))
    assert len(next(c for c in CASES if c.case == "name-overlong").file.encode()) == 249


async def run_once(prefix: list[str], config: Path, log: Path, finishers: list[Callable[[], None]]) -> int:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "ksefd", "--log-format", "json", "run", "--once", "-c", str(config),
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            env={**os.environ, "HOME": str(config.parent), "PYTHONDONTWRITEBYTECODE": "1"})
        await asyncio.sleep(0.3)              # the slow writer finishes while the daemon looks at its file
        for finish in finishers:
            finish()
        try:
            return await asyncio.wait_for(proc.wait(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            kept = Path(tempfile.gettempdir()) / "ksefd-corpus-last.log"
            shutil.copy(log, kept)
            raise AssertionError(f"the daemon did not finish; its log is kept in {kept}") from None


def _records(folder: Path, pattern: str) -> dict[str, dict[str, Any]]:
    """file name (as the record spells it) -> record, for sent/*.ksef.json or rejected/*.error.json."""
    found = {}
    for path in folder.glob(pattern):
        record = json.loads(path.read_bytes())
        found[record.get("file", "")] = {**record, "_stem": path.name.removesuffix(pattern[1:])}
    return found


def _key(name: str) -> str:
    """How a name appears in a JSON record (a name that is not UTF-8 is written with replacement marks)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@pytest.mark.timeout(240)
async def test_every_case_ends_as_the_manifest_says(sim_factory: Any, http: aiohttp.ClientSession,
                                                    open_folder: Path) -> None:  # noqa: F811
    prefix, uid = _as_other_user()
    base = open_folder
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, base, SELLER)
    config_path = write_config(base, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               daemon={"settle_seconds": 1.0})
    config = load(config_path)
    folders = config.companies[0].folders
    elsewhere = base / "elsewhere"
    for folder in (folders.outbox, elsewhere):
        folder.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in CASES if c.case != "device-file" or os.geteuid() == 0]
    log = base / "daemon.log"

    exits = []
    for phase in (1, 2):
        finishers: list[Callable[[], None]] = []
        for case in (c for c in chosen if c.phase == phase):
            make_entry(case, folders.outbox, elsewhere, folders.sent, folders.rejected, finishers)
            if case.case == "duplicate-in-drop":
                os.utime(folders.outbox / case.file, (1_000_000, 1_000_000))    # the older of the two
        _give(base, uid)
        unreadable = folders.outbox / "unreadable.xml"
        if phase == 1:
            unreadable.chmod(0o600 if uid is not None else 0o000)
            if uid is not None:
                os.chown(unreadable, 0, 0)
        exits.append(await run_once(prefix, config_path, log, finishers))
    assert exits == [0, 0], log.read_text(errors="replace")[-4000:]

    sent = _records(folders.sent, "*.ksef.json")
    errors = _records(folders.rejected, "*.error.json")
    wrong = [problem for case in chosen if (problem := _verdict(case, sent, errors, folders))]
    assert not wrong, "\n".join(wrong)

    expected_sent = [c for c in chosen if c.outcome == "sent"]
    assert len(sim_records(sim)) == len(expected_sent)            # nothing else reached KSeF
    assert not list((folders.outbox / ".ksefd").iterdir())          # nothing left claimed
    rows = await invoice_rows(config, "acme")
    assert sorted(str(r.state) for r in rows) == sorted(
        {"rejected": "rejected", "answered": "redrop"}.get(c.outcome, "done") for c in chosen
        if c.outcome in ("sent", "answered", "rejected"))


def _verdict(case: Case, sent: dict[str, dict[str, Any]], errors: dict[str, dict[str, Any]],
             folders: Any) -> str | None:
    key = _key(case.file)
    if case.outcome in ("sent", "answered"):       # answered: a re-drop, in sent/ from its original
        record = sent.get(key)
        if record is None:
            return f"{case.case}: not in sent/ (error: {errors.get(key, {}).get('message')})"
        if not (folders.sent / f"{record['_stem']}.upo.xml").exists():
            return f"{case.case}: no UPO"
    elif case.outcome == "rejected":
        error = errors.get(key)
        if error is None:
            return f"{case.case}: no error.json in rejected/ (sent: {key in sent})"
        if error["code"] != case.code or not error.get("message") or not error.get("hint"):
            return f"{case.case}: code {error['code']!r}, expected {case.code!r}: {error.get('message')}"
    elif case.outcome == "ignored" and (
            not os.path.lexists(folders.outbox / case.file) or key in errors or key in sent):
        return f"{case.case}: not left alone in the outbox"
    return None
