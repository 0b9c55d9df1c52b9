"""Intake and results work in groups (one commit, one directory fsync per group); the rules per invoice stay."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import spool_group
from ksefd.daemon.outbox import batch
from ksefd.daemon.outbox.outcomes import Outcomes
from ksefd.ksef import TransportError
from ksefd.store import InvoiceState
from ksefd.store.invoices import InvoiceRepo
from tests.daemon.support import drain, drop, drop_many, invoice, invoice_rows, one_company, read_json, sim_records


async def test_the_same_bytes_twice_in_one_drop_are_sent_once(sim_factory: Any, http: aiohttp.ClientSession,
                                                              tmp_path: Path) -> None:
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    data = invoice("GROUP/TWICE")
    outbox = config.companies[0].folders.outbox
    drop(outbox, "a.xml", data)                 # both claimed in the same chunk
    drop(outbox, "b.xml", data)
    drop(outbox, "c.xml", invoice("GROUP/OTHER"))
    await drain(config)
    assert len(sim_records(sim)) == 2
    folders = config.companies[0].folders
    sent = sorted(p.name for p in folders.sent.glob("*.xml") if not p.name.endswith(".upo.xml"))
    assert "c.xml" in sent
    # The copy waited for the first to finish, then got its result under its own name (issue #10 point 7).
    assert sent == ["a.xml", "b.xml", "c.xml"]
    copy = "b" if read_json(folders.sent / "b.ksef.json").get("redrop") else "a"
    record = read_json(folders.sent / f"{copy}.ksef.json")
    assert record["redrop"] is True and record["ksefNumber"] == read_json(
        folders.sent / f"{'a' if copy == 'b' else 'b'}.ksef.json")["ksefNumber"]
    assert (folders.sent / f"{copy}.xml").read_bytes() == data and not list(folders.rejected.iterdir())


async def test_a_batchs_results_cost_a_few_flushes_not_an_fsync_per_file(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sent/NAME.xml, NAME.ksef.json and NAME.upo.xml of a group are made durable together (spool_group): with
    an fsync each, a batch of N cost 3N of them (most of a large backlog's time in the kernel, issue #16)."""
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 40
    drop_many(outbox, "g", count, "GROUP/FSYNC")
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    await drain(config)
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(list(sent.glob("*.ksef.json"))) == count
    assert len(sim_records(sim)) == count
    if spool_group.flush([tmp_path]):        # Linux: a few flushes per group; elsewhere an fsync per file as before
        assert len(fsyncs) < count, len(fsyncs)


async def test_a_batchs_results_are_read_and_finished_a_page_at_a_time(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KSeF's list of a batch's invoices is followed page by page and each page's rows are read by the ids in
    their archive names, so a large batch never holds its whole list and all its rows at once (issue #16)."""
    monkeypatch.setattr(batch, "POLL", dataclasses.replace(batch.POLL, invoice_page_size=10))   # KSeF's least
    read: list[int] = []
    real = InvoiceRepo.get_many

    async def counting(self: InvoiceRepo, ids: Any) -> Any:
        ids = list(ids)
        read.append(len(ids))
        return await real(self, ids)

    monkeypatch.setattr(InvoiceRepo, "get_many", counting)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 35
    drop_many(outbox, "p", count, "GROUP/PAGE")
    await drain(config)
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(sim_records(sim)) == count
    numbers = {read_json(p)["ksefNumber"] for p in sent.glob("*.ksef.json")}
    assert len(numbers) == count
    assert read and max(read) <= 10
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}


async def test_a_groups_result_files_and_upos_share_three_flushes(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch group's UPOs are fetched first and written with its other result files (outcomes.accept_many):
    the working copies, the temps and the names, three syncfs for the group, not five (issue #16)."""
    if not spool_group.flush([tmp_path]):
        pytest.skip("no syncfs on this platform: each file is fsynced")
    _, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 40                  # one group (batch.RESULT_GROUP), worth flushing (spool_group.FLUSH_FROM)
    drop_many(outbox, "u", count, "GROUP/UPO")
    flushes: list[int] = []
    real = spool_group._syncfs
    assert real is not None
    monkeypatch.setattr(spool_group, "_syncfs", lambda fd: (flushes.append(fd), real(fd))[1])
    await drain(config)
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(list(sent.glob("*.ksef.json"))) == count
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}
    assert len(flushes) == 3, len(flushes)


async def test_an_invoice_whose_upo_fails_in_its_group_stays_accepted_and_gets_it_later(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's UPOs come first (batch.BatchRunner._accept_group): one that cannot be fetched leaves its
    invoice ACCEPTED with its sent/ files and a state file saying so; a later round fetches it. Every other
    invoice of the group is DONE with its UPO meanwhile."""
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 20
    drop_many(outbox, "f", count, "GROUP/UPOFAIL")
    real = Outcomes.fetch_upo
    failed: dict[int, int] = {}
    seen_accepted: list[Any] = []

    async def fetch_upo(self: Outcomes, row: Any, session_reference: str, url: str | None,
                        ksef_number: str | None = None) -> bytes:
        if row.file_name in ("f03.xml", "f11.xml") and not failed.get(row.id):
            failed[row.id] = 1
            return await _fail(self, row)
        if failed.get(row.id) == 1:         # the second try: what its invoice looked like meanwhile
            failed[row.id] = 2
            seen_accepted.append(((await self.ledger.store.invoices.get_many([row.id]))[0].state,
                                  read_json(outbox / f"{row.file_name[:-4]}.state.json")["state"],
                                  (config.companies[0].folders.sent / f"{row.file_name[:-4]}.ksef.json").exists()))
        return await real(self, row, session_reference, url, ksef_number)

    async def _fail(self: Outcomes, row: Any) -> bytes:
        raise TransportError("GET storage: the test's failure", method="GET", url="storage")

    monkeypatch.setattr(Outcomes, "fetch_upo", fetch_upo)
    await drain(config)
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(list(sent.glob("*.ksef.json"))) == count
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}
    assert seen_accepted == [(InvoiceState.ACCEPTED, "accepted", True)] * 2
    assert not list(outbox.glob("*.state.json")) and len(sim_records(sim)) == count
