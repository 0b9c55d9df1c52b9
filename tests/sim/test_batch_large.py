"""The one full-size batch: 10 000 invoices (the per-session maximum, PROTOCOL.md §5.2) in several parts
(issue #3 "done means"). The only 10 000-invoice test of the simulator; it prints its timing."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import sim_config

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
COUNT = 10_000


async def test_ten_thousand_invoices_in_four_parts(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = Batch(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    started = time.perf_counter()
    files = invoices(TEMPLATE, COUNT)
    archive = zip_archive(files)
    built = time.perf_counter()
    await batch.submit(archive, parts=4)
    uploaded = time.perf_counter()
    final = await batch.wait(timeout_s=110, interval_s=0.5)
    done = time.perf_counter()
    print(f"\n10 000-invoice batch: archive {len(archive)} B built in {built - started:.1f} s, opened+uploaded+closed "
          f"in {uploaded - built:.1f} s, processed in {done - uploaded:.1f} s ({COUNT / (done - uploaded):.0f}/s)")
    assert final["status"]["code"] == 200, final
    assert (final["invoiceCount"], final["successfulInvoiceCount"], final["failedInvoiceCount"]) == (COUNT, COUNT, 0)
    assert len(final["upo"]["pages"]) == 1          # a UPO page holds up to 10 000 documents
    first_page = await batch.invoices(page_size=1000)
    assert len(first_page) == COUNT
    assert [i["invoiceFileName"] for i in first_page[:3]] == [name for name, _ in files[:3]]
    assert len({i["ksefNumber"] for i in first_page}) == COUNT
