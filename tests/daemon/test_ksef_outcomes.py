"""KSeF's own rejections reach rejected/ with KSeF's words, a 440 for the same bytes is a success, the
same file dropped twice is sent once, and a reused name is a new invoice (issue #5 items 2, 5, 6)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.client import KsefClient
from tests.daemon.support import (
    SELLER,
    drain,
    drop,
    invoice,
    invoice_rows,
    one_company,
    read_json,
    sim_records,
)


async def _send_directly(sim: Any, token: Path, data: bytes) -> str:
    """Another system (or an earlier send whose answer was lost) puts the invoice into KSeF first."""
    async with KsefClient("test", base_url=sim.base_url) as client:
        ctx = client.context(ContextIdentifier.nip(SELLER), await asyncio.to_thread(token.read_text))
        sent = await ctx.online().send(data)
        for _ in range(200):
            status = await ctx.sessions.invoice(sent.session_reference_number, sent.reference_number)
            if status.is_final:
                break
            await asyncio.sleep(0.02)
        await ctx.close()
        assert status.ksef_number is not None
        return status.ksef_number


async def test_semantic_rejection_450_is_reported_with_ksefs_words(sim_factory: Any, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    bad_buyer = invoice("KSEF/450", buyer="1234567890")            # fails the NIP checksum PROD applies
    drop(config.companies[0].folders.outbox, "FV-450.xml", bad_buyer)
    await drain(config)
    error = read_json(config.companies[0].folders.rejected / "FV-450.error.json")
    assert error["stage"] == "ksef" and error["code"] == "ksef-450"
    assert any("1234567890" in d for d in error["details"]) and error["hint"]
    assert error["ksefStatus"]["code"] == 450 and error["invoiceReferenceNumber"]
    assert (config.companies[0].folders.rejected / "FV-450.xml").read_bytes() == bad_buyer
    assert [r["status"]["code"] for r in sim_records(sim)] == [450]


async def test_attachment_goes_by_batch_and_415_is_reported(sim_factory: Any, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    data = invoice("KSEF/415", template="FA_3_Przyklad_24.xml")
    drop(config.companies[0].folders.outbox, "with-attachment.xml", data)
    await drain(config)
    error = read_json(config.companies[0].folders.rejected / "with-attachment.error.json")
    assert error["code"] == "ksef-415" and "sesjach wsadowych" in error["hint"]     # batch sessions (pl default)
    records = sim_records(sim)
    assert [(r["sessionType"], r["status"]["code"]) for r in records] == [("Batch", 415)]


async def test_attachment_is_accepted_by_batch_once_enabled(sim_factory: Any, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    async with http.post(f"{sim.base_url}/testdata/attachment", json={"nip": SELLER}) as resp:
        assert resp.status == 200
    data = invoice("KSEF/ATT", template="FA_3_Przyklad_24.xml")
    drop(config.companies[0].folders.outbox, "with-attachment.xml", data)
    await drain(config)
    record = read_json(config.companies[0].folders.sent / "with-attachment.ksef.json")
    assert record["sessionType"] == "batch" and record["ksefNumber"]
    assert (config.companies[0].folders.sent / "with-attachment.upo.xml").exists()


async def test_440_for_different_bytes_is_a_rejection_that_says_so(sim_factory: Any, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    sim, token, config = await one_company(sim_factory, http, tmp_path)
    original = await _send_directly(sim, token, invoice("KSEF/DUP"))
    other = invoice("KSEF/DUP", template="FA_3_Przyklad_8.xml")    # same seller, type and P_2, other content
    drop(config.companies[0].folders.outbox, "again.xml", other)
    await drain(config)
    error = read_json(config.companies[0].folders.rejected / "again.error.json")
    assert error["code"] == "ksef-440" and original in error["message"] and "z inną treścią" in error["message"]
    assert not list(config.companies[0].folders.sent.iterdir())


async def test_440_for_the_same_bytes_is_success_with_the_original(sim_factory: Any, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    sim, token, config = await one_company(sim_factory, http, tmp_path)
    data = invoice("KSEF/SAME")
    original = await _send_directly(sim, token, data)
    drop(config.companies[0].folders.outbox, "same.xml", data)
    await drain(config)
    sent = config.companies[0].folders.sent
    record = read_json(sent / "same.ksef.json")
    assert record["ksefNumber"] == original and record["resolvedDuplicate"]["invoiceReferenceNumber"]
    assert original.encode() in (sent / "same.upo.xml").read_bytes()
    codes = sorted(r["status"]["code"] for r in sim_records(sim))
    assert codes == [200, 440]


async def test_same_bytes_dropped_again_are_not_sent_twice_and_answered_under_the_new_name(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Issue #10 point 7: a byte-identical re-drop of an accepted invoice is answered from the original."""
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    data = invoice("KSEF/TWICE")
    folders = config.companies[0].folders
    drop(folders.outbox, "first.xml", data)
    await drain(config)
    original = read_json(folders.sent / "first.ksef.json")
    drop(folders.outbox, "first.xml", data)           # the ERP exports the same invoice again
    drop(folders.outbox, "copy.xml", data)
    await drain(config)
    assert len(sim_records(sim)) == 1
    assert not list(folders.rejected.iterdir())
    assert read_json(folders.sent / "first.ksef.json") == original          # the original's result untouched
    upo = (folders.sent / "first.upo.xml").read_bytes()
    for stem in ("first-2", "copy"):
        record = read_json(folders.sent / f"{stem}.ksef.json")
        assert record["redrop"] is True and record["ksefNumber"] == original["ksefNumber"]
        assert record["originalFile"] == "first.xml" and record["originalResult"] == "first"
        assert (folders.sent / f"{stem}.xml").read_bytes() == data
        assert (folders.sent / f"{stem}.upo.xml").read_bytes() == upo
    rows = await invoice_rows(config, "acme")
    assert sorted(str(r.state) for r in rows) == ["done", "redrop", "redrop"]
    assert not list(folders.outbox.glob("*.state.json"))


async def test_a_different_file_under_a_reused_name_is_a_new_invoice(sim_factory: Any, http: aiohttp.ClientSession,
                                                                    tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    outbox, sent = config.companies[0].folders.outbox, config.companies[0].folders.sent
    first, second = invoice("KSEF/NAME/1"), invoice("KSEF/NAME/2")
    drop(outbox, "FV.xml", first)
    await drain(config)
    drop(outbox, "FV.xml", second)
    await drain(config)
    assert (sent / "FV.xml").read_bytes() == first and (sent / "FV-2.xml").read_bytes() == second
    assert read_json(sent / "FV.ksef.json")["ksefNumber"] != read_json(sent / "FV-2.ksef.json")["ksefNumber"]
    assert (sent / "FV-2.upo.xml").exists()
    assert sorted(r["status"]["code"] for r in sim_records(sim)) == [200, 200]

