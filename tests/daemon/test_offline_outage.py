"""Issue #11 end to end: an outage window (FAILURE) in the simulator while invoices arrive for two companies.
KOD I / KOD II and NAME.offline.json appear within seconds of each drop; after the outage the invoices are sent
with offlineMode, accepted with invoicingMode Offline, UPOs saved, each exactly once. KOD II verifies with the
certificate (RSA-PSS salt 32 for one company, ECDSA P-256 P1363 for the other) over exactly §8.6's string."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from ksefd.ksef import qr
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.offline_support import (
    FAST_LATARNIA,
    offline_certificate,
    running,
    set_outage,
    verify_kod2,
    wait_for_file,
)
from tests.daemon.support import (
    OTHER,
    SELLER,
    drop,
    invoice,
    load,
    read_json,
    sim_records,
    today,
    token_file,
    write_config,
)

OUTAGE_SECONDS = 8.0


@pytest.mark.timeout(120)
async def test_failure_window_two_companies(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    companies = []
    certs = {}
    for name, nip, kind in (("acme", SELLER, "rsa"), ("beta", OTHER, "ec")):
        token = await token_file(http, sim.base_url, tmp_path, nip)
        cert, key = offline_certificate(tmp_path, name, nip, kind)
        certs[name] = cert
        companies.append({"name": name, "nip": nip, "token_file": str(token), "offline_certificate": str(cert),
                          "offline_private_key": str(key)})
    config = load(write_config(tmp_path, sim.base_url, companies, ksef=FAST_LATARNIA,
                               sending={"offline_after_seconds": 600, "batch_threshold": 3}))
    acme, beta = config.companies
    await set_outage(http, sim, 0, OUTAGE_SECONDS)
    files = {acme: {f"A-{n}.xml": invoice(f"OFF/A/{n}") for n in range(4)},
             beta: {f"B-{n}.xml": invoice(f"OFF/B/{n}", seller=OTHER) for n in range(2)}}
    async with running(config) as task:
        for company, dropped in files.items():
            for name, data in dropped.items():
                drop(company.folders.outbox, name, data)
                stem = name.removesuffix(".xml")
                took = await wait_for_file(company.folders.offline / f"{stem}.offline.json", 5, task)
                assert took < 3.0, f"{name}: artefacts took {took:.1f} s"
        for company, dropped in files.items():
            for name in dropped:
                await wait_for_file(company.folders.sent / f"{name.removesuffix('.xml')}.upo.xml", 60, task)

    for company, dropped in files.items():
        for name, data in dropped.items():
            stem = name.removesuffix(".xml")
            offline = read_json(company.folders.offline / f"{stem}.offline.json")
            assert offline["mode"] == "failure" and offline["announced"] is True
            assert offline["kod1"]["label"] == "OFFLINE" and offline["kod2"]["label"] == "CERTYFIKAT"
            assert offline["kod1"]["link"] == qr.invoice_link("test", company.nip, today(), sha256_b64(data))
            for image in ("kod1.png", "kod1.svg", "kod2.png", "kod2.svg"):
                assert (company.folders.offline / f"{stem}.{image}").stat().st_size > 0
            signed = verify_kod2(offline["kod2"]["link"], certs[company.name])
            serial = qr.certificate_serial_hex(qr_certificate(certs[company.name]))
            assert signed == (f"qr-test.ksef.mf.gov.pl/certificate/Nip/{company.nip}/{company.nip}/{serial}/"
                              f"{qr.hash_b64url(sha256_b64(data))}")
            assert offline["ksefNumber"] and offline["invoicingMode"] == "Offline"
            record = read_json(company.folders.sent / f"{stem}.ksef.json")
            assert record["invoicingMode"] == "Offline" and record["offlineMode"] is True
            assert record["offline"]["mode"] == "failure" and record["kod1"]["label"] == record["ksefNumber"]
            assert (company.folders.sent / f"{stem}.kod1.png").exists()
    received = sim_records(sim)
    assert len(received) == 6 and all(r["offlineMode"] and r["invoicingMode"] == "Offline" for r in received)
    assert all(r["status"]["code"] == 200 for r in received)
    assert len({r["invoiceHash"] for r in received}) == 6                  # each sent exactly once
    sessions = {s["referenceNumber"]: s for s in sim.world.store.values("sessions")}
    batch = [s for s in sessions.values() if s["sessionType"] == "Batch"]
    assert batch and all(s["offlineMode"] for s in batch)                  # acme's 4: an offline batch session
    assert all(sessions[r["sessionReferenceNumber"]]["sessionType"] == "Online" for r in received
               if r["invoiceHash"] in {sha256_b64(d) for d in files[beta].values()})
    async with await Store.open(config.state_db) as store:
        for company in (acme, beta):
            rows = await store.invoices.in_state(company.name, *InvoiceState)
            assert {r.state for r in rows} == {InvoiceState.DONE} and all(r.offline for r in rows)
        history = await store.announcements.history(sim.root_url)
        assert {a.type for a in history} >= {"FAILURE_START"}


def qr_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
