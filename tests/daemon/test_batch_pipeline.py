"""A batch's results run as one pipeline across the pages of KSeF's list (issue #16 goal 2): the next page is
asked for while a page's files and UPOs are stored; every invoice still ends DONE once, with its UPO."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.daemon.outbox import batch
from ksefd.daemon.outbox.outcomes import Outcomes
from ksefd.ksef.sessions import SessionQueries
from ksefd.store import InvoiceState
from tests.daemon.support import drain, drop_many, invoice_rows, one_company, read_json, sim_records


async def test_the_next_page_is_listed_while_a_pages_upos_are_stored(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first group's results (files, UPOs, commits) are stored only once the second page has been asked for:
    with the pipeline drained at every page (the page's results all stored before the next page was asked for)
    it never is."""
    monkeypatch.setattr(batch, "POLL", dataclasses.replace(batch.POLL, invoice_page_size=10))   # KSeF's least
    monkeypatch.setattr(batch, "RESULT_GROUP", 5)
    real_pages, real_accept = SessionQueries.invoice_pages, Outcomes.accept_many
    second = asyncio.Event()
    held: list[bool] = []

    async def pages(self: SessionQueries, reference: str, **kwargs: Any) -> AsyncIterator[Any]:
        async for page in real_pages(self, reference, **kwargs):
            yield page
            second.set()            # resumed after the first page: the next one is being asked for

    async def accept_many(self: Outcomes, items: Any, *args: Any) -> Any:
        if items and not held:      # the first group's files, UPOs and commits wait for the second page's question
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(second.wait(), 10)
            held.append(second.is_set())
        return await real_accept(self, items, *args)

    monkeypatch.setattr(SessionQueries, "invoice_pages", pages)
    monkeypatch.setattr(Outcomes, "accept_many", accept_many)
    sim, _, config = await one_company(sim_factory, http, tmp_path, batch_threshold=5)
    outbox = config.companies[0].folders.outbox
    count = 25
    drop_many(outbox, "l", count, "PIPE/PAGE")
    await drain(config)
    assert held == [True]
    sent = config.companies[0].folders.sent
    assert len(list(sent.glob("*.upo.xml"))) == count and len(sim_records(sim)) == count
    assert len({read_json(p)["ksefNumber"] for p in sent.glob("*.ksef.json")}) == count
    assert {r.state for r in await invoice_rows(config, "acme")} == {InvoiceState.DONE}
