"""The one full-size test of the simulator (issue #3 "done means"): a batch of 10 000 invoices (the
per-session maximum, PROTOCOL.md §5.2) in several parts, then, on the same data plus one invoice, the
real 10 000-record cap: a truncated metadata page and a truncated export continued from
lastPermanentStorageDate (§6.1, §6.4). It prints its timing."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import aiohttp

from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import sim_config
from tests.support.receive_flow import Receiver, filters, metadata_of, seed

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"
COUNT = 10_000


async def test_ten_thousand_invoices_in_four_parts(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
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

    await seed(http, sim.base_url, batch.token, TEMPLATE, 1, prefix="LAST")
    receiver = Receiver(http, sim.base_url, batch.token)
    page = await receiver.query(filters("Subject1", since), pageSize=250, pageOffset=39)
    assert (len(page["invoices"]), page["hasMore"], page["isTruncated"]) == (250, True, True)

    started = time.perf_counter()
    package, files = await receiver.export(filters("Subject1", since))
    metadata = metadata_of(files)
    assert (package["invoiceCount"], package["isTruncated"], len(files)) == (COUNT, True, COUNT + 1)
    assert package["lastPermanentStorageDate"] == metadata[-1]["permanentStorageDate"]
    rest, rest_files = await receiver.export(filters("Subject1", package["lastPermanentStorageDate"]))
    print(f"truncated export of {COUNT} + continuation in {time.perf_counter() - started:.1f} s")
    assert (rest["invoiceCount"], rest["isTruncated"]) == (2, False)      # the boundary one again, and the new one
    numbers = {m["ksefNumber"] for m in metadata} | {m["ksefNumber"] for m in metadata_of(rest_files)}
    assert len(numbers) == COUNT + 1
