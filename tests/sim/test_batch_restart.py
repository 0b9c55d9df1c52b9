"""A batch package being processed when the simulator stops (`--state`) is processed by the restarted
simulator, and every file becomes exactly one invoice (PROTOCOL.md §5; batch.py module doc)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, split, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import sim_config

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"


def config(state: Path, **settings: Any) -> Any:
    return sim_config(state_path=state, access_token_ttl_s=6 * 3600, **settings)


async def finished_once(batch: Batch, files: list[tuple[str, bytes]]) -> None:
    final = await batch.wait(timeout_s=20)
    assert final["status"]["code"] == 200, final
    assert (final["invoiceCount"], final["successfulInvoiceCount"], final["failedInvoiceCount"]) == (len(files),
                                                                                                     len(files), 0)
    listed = await batch.invoices()
    assert sorted(i["invoiceFileName"] for i in listed) == sorted(name for name, _ in files)
    assert sorted(i["ordinalNumber"] for i in listed) == list(range(1, len(files) + 1))


async def test_a_package_waiting_for_processing_is_processed_after_a_restart(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    state = tmp_path / "sim.db"
    first = await sim_factory(config=config(state, processing_delay_s=60))
    batch = Batch(http, first.base_url, await access_token(http, first.base_url, NIP))
    files = invoices(TEMPLATE, 4)
    await batch.submit(zip_archive(files), parts=2)
    assert (await batch.status())["status"]["code"] == 150
    await first.server.close()

    second = await sim_factory(config=config(state))
    batch.base_url = second.base_url
    await finished_once(batch, files)


def crash_after_two_invoices(state: Path, reference: str, encrypted: list[bytes]) -> None:
    """Rewrite the stopped simulator's SQLite file to what a kill -9 leaves between the 2nd and 3rd file of
    the package: two invoices recorded, the session in 150 and not closing, the uploaded parts still there."""
    db = sqlite3.connect(state)
    with db:
        for key, value in db.execute("SELECT key, value FROM records WHERE tbl = 'invoices'").fetchall():
            invoice = json.loads(value)
            if invoice["sessionReferenceNumber"] == reference and invoice["ordinalNumber"] > 2:
                db.execute("DELETE FROM records WHERE tbl = 'invoices' AND key = ?", (key,))
                db.execute("DELETE FROM blobs WHERE key = ?", (f"invoice/{key}",))
        (value,) = db.execute("SELECT value FROM records WHERE tbl = 'sessions' AND key = ?", (reference,)).fetchone()
        session = json.loads(value)
        session.update(status={"code": 150, "description": "Trwa przetwarzanie", "details": None}, closing=False,
                       invoiceCount=2, upoPages=[])
        session.pop("finalizing", None)
        db.execute("UPDATE records SET value = ? WHERE tbl = 'sessions' AND key = ?", (json.dumps(session), reference))
        for ordinal, part in enumerate(encrypted, start=1):
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (f"batch/{reference}/{ordinal}", part))
    db.close()


async def test_a_package_cut_between_two_invoices_goes_on_from_the_third(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    state = tmp_path / "sim.db"
    first = await sim_factory(config=config(state))
    batch = Batch(http, first.base_url, await access_token(http, first.base_url, NIP))
    files = invoices(TEMPLATE, 4)
    archive = zip_archive(files)
    encrypted = batch.encrypt(split(archive, 2))
    await batch.open(await batch.open_body(archive, encrypted))
    await batch.upload_all(encrypted)
    await batch.close()
    await batch.wait()
    await first.server.close()
    crash_after_two_invoices(state, batch.reference, encrypted)

    second = await sim_factory(config=config(state))
    batch.base_url = second.base_url
    await finished_once(batch, files)          # files 3 and 4 added once; 1 and 2 not sent again (no 440s)
