"""The official samples through the whole daemon: outbox -> KSeF (simulator over HTTP) -> sent/ with the
KSeF number and the UPO (issue #5 "done means")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from lxml import etree

from ksefd.samples import has_attachment, sample_bytes, sample_names
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, SessionState, Store
from tests.daemon.support import SELLER, drain, drop, invoice, load, read_json, token_file, write_config

UPO_NS = "{http://upo.schematy.mf.gov.pl/KSeF/v4-3}"


async def test_official_samples_are_accepted_with_upos(sim_factory: Any, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER,
                                                          "token_file": str(token)}]))
    outbox = config.companies[0].folders.outbox
    names = [n for n in sample_names() if not has_attachment(sample_bytes(n))]
    sent: dict[str, bytes] = {}
    for i, name in enumerate(names):
        data = invoice(f"DAEMON/SAMPLE/{i}", template=name)
        sent[name] = data
        drop(outbox, name, data)

    await drain(config)

    folder = config.companies[0].folders.sent
    for name, data in sent.items():
        stem = name.removesuffix(".xml")
        assert (folder / name).read_bytes() == data                    # the exact bytes sent
        record = read_json(folder / f"{stem}.ksef.json")
        assert record["ksefNumber"].startswith(SELLER) and record["sessionType"] == "online"
        assert record["verificationLink"].startswith("https://qr-test.ksef.mf.gov.pl/invoice/")
        upo = etree.fromstring((folder / f"{stem}.upo.xml").read_bytes())
        assert [e.text for e in upo.iter(f"{UPO_NS}NumerKSeFDokumentu")] == [record["ksefNumber"]]
        assert not (outbox / f"{stem}.state.json").exists()
    assert sorted(p.name for p in outbox.iterdir()) == [".ksefd", "offline"]    # offline/: offline24 on demand
    assert not list((outbox / ".ksefd").iterdir())                     # working copies discarded once done
    assert not list(config.companies[0].folders.rejected.iterdir())
    async with await Store.open(config.state_db) as store:
        rows = await store.invoices.in_state("acme", *InvoiceState)
        assert {r.state for r in rows} == {InvoiceState.DONE} and len(rows) == len(names)
        sessions = await store.sessions.unfinished("acme")
        assert sessions == []                                            # the online session was closed ...
        session = await store.sessions.get(rows[0].session_id or 0)
        assert session is not None and session.state == SessionState.DONE
        upos = await store.sessions.upos(session.id)
        assert [u for u in upos if u.invoice_id is None]                 # ... and its session UPO saved
