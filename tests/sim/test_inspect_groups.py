"""Files are checked in groups, one worker-thread hop for up to INSPECT_AHEAD + 1 of them (ksefd/sim/invoices.py):
every file still gets its own verdict, in submission order, with the same codes as when checked one by one."""

from __future__ import annotations

from typing import Any

import aiohttp

from ksefd.samples import make_invoice
from ksefd.sim import invoices as sim_invoices
from ksefd.sim.invoice_records import index
from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import sim_config

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"


async def test_bad_files_across_groups_keep_their_codes(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    batch = Batch(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    files = invoices(TEMPLATE, 3 * (sim_invoices.INSPECT_AHEAD + 1) + 5)
    files[0] = ("broken.xml", b"<Faktura>not FA(3)</Faktura>")                      # the head of the first group
    files[7] = ("bom.xml", b"\xef\xbb\xbf" + files[7][1])
    files[12] = ("copy-of-11.xml", files[11][1])          # a duplicate right behind its original, same group
    files[40] = ("other-seller.xml", make_invoice(TEMPLATE, number="B/other", seller_nip="5260250274"))
    files[70] = ("copy-of-3.xml", files[3][1])            # its original is in an earlier group
    files[-1] = ("last-broken.xml", b"<?xml version='1.0'?><x/>")
    await batch.submit(zip_archive(files), parts=1)
    final = await batch.wait()
    assert final["status"]["code"] == 200, final
    codes = {i["invoiceFileName"]: i["status"]["code"] for i in await batch.invoices()}
    assert {name: code for name, code in codes.items() if code != 200} == {
        "broken.xml": 430, "bom.xml": 430, "copy-of-11.xml": 440, "other-seller.xml": 410, "copy-of-3.xml": 440,
        "last-broken.xml": 430}
    assert len(codes) == len(files)
    assert index(sim.world).inspected == {}                # nothing checked ahead is left behind


def test_a_failing_check_stands_for_its_own_file_only() -> None:
    """An exception while checking one file of a group is that file's answer alone (its invoice gets 500)."""
    limits = {"maxInvoiceSize": 1_000_000, "maxInvoiceWithAttachmentSize": 3_000_000}
    answers = sim_invoices._inspect_each([(TEMPLATE, limits), (TEMPLATE, {}), (b"<x/>", limits)])
    assert isinstance(answers[0], dict) and answers[0]["facts"]["sellerNip"] == NIP
    assert isinstance(answers[1], KeyError)
    assert answers[2].code == 430
