"""`send = false` gives claimed files back, but never an invoice already issued offline: its KOD I may be
printed and handed over, and it must still reach KSeF with offlineMode before its deadline (PROTOCOL.md §8)."""

from __future__ import annotations

from pathlib import Path

from ksefd.clock import SystemClock
from ksefd.daemon.outbox.sending_off import return_unsent
from ksefd.daemon.runtime import Runtime
from ksefd.ksef import RateLimiter
from ksefd.store import InvoiceState, Store
from tests.daemon.support import SELLER, invoice, load, write_config

S = InvoiceState


async def test_sending_off_keeps_an_offline_invoice_and_gives_back_the_others(tmp_path: Path) -> None:
    (tmp_path / "acme.token").write_text("unused\n")
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [
        {"name": "acme", "nip": SELLER, "token_file": "acme.token", "send": False}]))
    company = config.companies[0]
    work = company.folders.outbox / ".ksefd"
    work.mkdir(parents=True)
    clock = SystemClock()
    store = await Store.open(config.state_db, clock)
    try:
        paths = {}
        for name in ("PLAIN.xml", "OFFLINE.xml"):
            paths[name] = work / f"0123456789abcdef.{name}"
            paths[name].write_bytes(invoice(name))
        plain = await store.invoices.add("acme", "PLAIN.xml", "p", 1, work_path=str(paths["PLAIN.xml"]))
        offline = await store.invoices.add("acme", "OFFLINE.xml", "o", 1, work_path=str(paths["OFFLINE.xml"]))
        for row_id in (plain.id, offline.id):
            await store.invoices.transition(row_id, S.CLAIMED, S.CHECKED)
        await store.invoices.transition(plain.id, S.CHECKED, S.QUEUED)
        await store.invoices.transition(offline.id, S.CHECKED, S.OFFLINE, offline=True)
        await store.invoices.transition(offline.id, S.OFFLINE, S.DEFERRED)       # a send failed; it waits
        runtime = Runtime(config, store, clock, RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep))
        assert await return_unsent(runtime, company) == 1
        assert (company.folders.outbox / "PLAIN.xml").exists()
        assert paths["OFFLINE.xml"].exists() and not (company.folders.outbox / "OFFLINE.xml").exists()
        states = {r.file_name: r.state for r in await store.invoices.in_state("acme", *InvoiceState)}
        assert states == {"PLAIN.xml": S.RETURNED, "OFFLINE.xml": S.DEFERRED}
    finally:
        await store.close()
