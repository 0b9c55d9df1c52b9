"""Start-up at scale (issue #16 point 4: 1 000 companies connect within the per-IP limit of the public calls, so the
start-up before the first login counts): each outbox's folders are prepared once at start, by the daemon before its
one watcher starts, not again by the worker's first run. What preparing does (stale temporary files removed)
still happens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.daemon.outbox.files import OutboxFiles
from tests.daemon.support import drain, drop, invoice, one_company, read_json


async def test_each_outbox_is_prepared_once_at_start(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    company = config.companies[0]
    drop(company.folders.outbox, "A.xml", invoice("ONCE/1"))
    stale = company.folders.outbox / ".A.xml.0123456789abcdef.ksefd.tmp"       # a crash's leftover
    stale.write_bytes(b"half")
    prepared: list[str] = []
    real = OutboxFiles.prepare

    def counted(self: OutboxFiles) -> None:
        prepared.append(self.company.name)
        real(self)

    monkeypatch.setattr(OutboxFiles, "prepare", counted)
    await drain(config)
    assert prepared == [company.name]
    assert not stale.exists()
    assert read_json(company.folders.sent / "A.ksef.json")["ksefNumber"]
