"""Offline modes one by one (issue #11 items 2-7): KSeF unreachable without an announcement (the taxpayer's
offline24, after offline_after_seconds), offline24 on demand through outbox/offline/ without an Offline
certificate (KOD I only, a warning), a total failure (no QR codes, kept queued, sent afterwards), `ksefd status`
while invoices wait offline, and a technical correction (PROTOCOL.md §8.4) accepted and linked, and one refused
with 21166 reaching rejected/ with a clear message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import SystemClock, end_of_day, next_business_day, warsaw_date
from ksefd.daemon import status
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.offline_support import FAST_LATARNIA, running, set_outage, wait_for_file
from tests.daemon.support import (
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
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online

BAD_BUYER = "1234567890"        # fails the NIP checksum: KSeF (with subject-identifier-validation) answers 450


async def setup(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, **sending: Any) -> tuple[Any, Any]:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                               ksef=FAST_LATARNIA, sending=sending or None))
    return sim, config


async def faults(http: aiohttp.ClientSession, sim: Any, spec: str | None) -> None:
    if spec is None:
        async with http.delete(f"{sim.root_url}/sim/faults") as response:
            assert response.status == 200
        return
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": spec}) as response:
        assert response.status == 200


async def current_status(config: Any) -> status.DaemonStatus:
    async with await Store.open(config.state_db) as store:
        return await status.gather(store, config, SystemClock())


@pytest.mark.timeout(90)
async def test_unreachable_without_announcement_is_the_taxpayers_offline24(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path, offline_after_seconds=1)
    company = config.companies[0]
    await faults(http, sim, "5xx=1,html=1")            # every /v2 call fails; Latarnia still says AVAILABLE
    async with running(config) as task:
        drop(company.folders.outbox, "U-1.xml", invoice("UNREACH/1"))
        await wait_for_file(company.folders.offline / "U-1.offline.json", 20, task)
        offline = read_json(company.folders.offline / "U-1.offline.json")
        assert offline["mode"] == "offline24" and offline["announced"] is False
        assert "nie ogłoszono niedostępności" in offline["modeLabel"] and "offline24" in offline["modeLabel"]
        assert offline["kod1"]["label"] == "OFFLINE" and offline["kod2"] is None
        assert any("KOD II" in w for w in offline["warnings"])
        assert offline["deadline"] is not None and "następnego dnia roboczego" in offline["deadlineRule"]
        shown = await current_status(config)
        text = status.render(shown)
        assert "KSeF: NIEOSIĄGALNY od" in text          # "UNREACHABLE since", Polish by default (issue #14)
        assert "wystawione offline: 1" in text and "bez KOD II" in text      # 1 issued offline, without KOD II
        assert shown.companies[0].offline is not None and shown.companies[0].offline["waiting"] == 1
        listed = shown.companies[0].offline["invoices"][0]
        assert (listed["file"], listed["state"], listed["mode"]) == ("U-1.xml", "offline", "offline24")
        assert listed["lastDayToSend"] == offline["lastDayToSend"] and "pierwsza do końca dnia" in text
        assert sim_records(sim) == []
        await faults(http, sim, None)
        await wait_for_file(company.folders.sent / "U-1.upo.xml", 30, task)
    record = read_json(company.folders.sent / "U-1.ksef.json")
    assert record["invoicingMode"] == "Offline" and record["offline"]["mode"] == "offline24"
    assert [r["offlineMode"] for r in sim_records(sim)] == [True]


@pytest.mark.timeout(90)
async def test_offline24_on_demand_and_total_failure(sim_factory: Any, http: aiohttp.ClientSession,
                                                     tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path)
    company = config.companies[0]
    yesterday = invoice("MIDNIGHT/1", issue_date=today() - dt.timedelta(days=1))
    async with running(config) as task:
        # The midnight rule (PROTOCOL.md §8.3): sent online, P_1 yesterday: KSeF marks it Offline; not an error.
        drop(company.folders.outbox, "M-1.xml", yesterday)
        await wait_for_file(company.folders.sent / "M-1.upo.xml", 20, task)
        marked = read_json(company.folders.sent / "M-1.ksef.json")
        assert marked["invoicingMode"] == "Offline" and "offline" not in marked
        assert not (company.folders.offline / "M-1.offline.json").exists()
        # KSeF available: a file in outbox/offline/ is issued offline24 at once, then sent with offlineMode.
        (company.folders.outbox / "offline").mkdir(parents=True, exist_ok=True)
        drop(company.folders.outbox / "offline", "R-1.xml", invoice("REQ/1"))
        await wait_for_file(company.folders.sent / "R-1.upo.xml", 20, task)
        requested = read_json(company.folders.offline / "R-1.offline.json")
        assert requested["mode"] == "offline24" and requested["ksefNumber"]
        assert "zlecony przez system ERP" in requested["reason"]           # requested by the ERP
        # A total failure: no QR codes, kept queued (no obligation to send), sent once KSeF is back. The daemon
        # learns of it when a send fails (503) and asks Latarnia at once, not at the next regular poll. That
        # send itself stays in doubt (KSeF may have taken it) until KSeF can say; it is not issued offline.
        await set_outage(http, sim, 0, 6, "TOTAL_FAILURE")
        drop(company.folders.outbox, "T-0.xml", invoice("TOTAL/0"))
        await wait_for_latarnia(config, "total-failure")
        drop(company.folders.outbox, "T-1.xml", invoice("TOTAL/1"))
        await wait_for_file(company.folders.offline / "T-1.offline.json", 5, task)
        total = read_json(company.folders.offline / "T-1.offline.json")
        assert total["mode"] == "total-failure" and total["kod1"] is None and total["deadline"] is None
        text = status.render(await current_status(config))
        assert "awaria całkowita KSeF: faktury wstrzymane w kolejce: 1" in text      # total failure: kept queued
        await wait_for_file(company.folders.sent / "T-1.upo.xml", 30, task)
        await wait_for_file(company.folders.sent / "T-0.upo.xml", 30, task)
    assert not (company.folders.offline / "T-0.offline.json").exists()
    modes = {r["invoiceHash"]: (r["offlineMode"], r["invoicingMode"]) for r in sim_records(sim)}
    assert modes.pop(sha256_b64(yesterday)) == (False, "Offline")
    assert modes == {sha256_b64(invoice("REQ/1")): (True, "Offline"), sha256_b64(invoice("TOTAL/1")): (True, "Offline"),
                     sha256_b64(invoice("TOTAL/0")): (False, "Online")}


async def wait_for_latarnia(config: Any, state: str) -> None:
    import asyncio
    for _ in range(200):
        shown = (await current_status(config)).companies[0].offline
        if shown and (shown.get("availability") or {}).get("state") == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"ksefd never saw KSeF as {state}")


@pytest.mark.timeout(90)
async def test_technical_correction_accepted_and_linked_and_21166_rejected(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path)
    company = config.companies[0]
    requests = company.folders.outbox / "offline"
    requests.mkdir(parents=True, exist_ok=True)
    broken = {n: invoice(f"TECH/{n}", buyer=BAD_BUYER) for n in (1, 2)}
    async with running(config) as task:
        for n, data in broken.items():
            drop(requests, f"TECH-{n}.xml", data)
            await wait_for_file(company.folders.rejected / f"TECH-{n}.error.json", 20, task)
        original = read_json(company.folders.rejected / "TECH-1.error.json")
        assert original["code"] == "ksef-450"
        # The ERP drops the fixed file: same number, sent as a technical correction of the rejected original.
        fixed = invoice("TECH/1")
        drop(company.folders.outbox, "TECH-1-fixed.xml", fixed)
        await wait_for_file(company.folders.sent / "TECH-1-fixed.upo.xml", 20, task)
        # Somebody else corrected TECH/2 in KSeF already: ksefd's own correction gets 21166.
        online = Online(http, sim.base_url, await access_token(http, sim.base_url, SELLER))
        await online.open()
        other = await online.submit(invoice("TECH/2", buyer="1111111111").replace(b"</P_2>", b"</P_2>"),
                                    offlineMode=True, hashOfCorrectedInvoice=sha256_b64(broken[2]))
        assert other["status"]["code"] == 200
        drop(company.folders.outbox, "TECH-2-fixed.xml", invoice("TECH/2", buyer="5265877635"))
        await wait_for_file(company.folders.rejected / "TECH-2-fixed.error.json", 20, task)
    record = read_json(company.folders.sent / "TECH-1-fixed.ksef.json")
    assert record["technicalCorrectionOf"]["invoiceHash"] == sha256_b64(broken[1])
    assert record["technicalCorrectionOf"]["file"] == "TECH-1.xml" and record["invoicingMode"] == "Offline"
    linked = read_json(company.folders.rejected / "TECH-1.error.json")
    assert linked["technicalCorrection"]["ksefNumber"] == record["ksefNumber"]
    by_hash = {r["invoiceHash"]: r for r in sim_records(sim)}
    correction = by_hash[sha256_b64(fixed)]
    assert correction["hashOfCorrectedInvoice"] == sha256_b64(broken[1])
    assert correction["correctedInvoiceReference"] == by_hash[sha256_b64(broken[1])]["referenceNumber"]
    refused = read_json(company.folders.rejected / "TECH-2-fixed.error.json")
    assert refused["code"] == "ksef-21166" and "ma już prawidłową korektę" in refused["hint"]   # already
    assert refused["technicalCorrectionOf"]["invoiceHash"] == sha256_b64(broken[2])
    async with await Store.open(config.state_db) as store:
        states = {r.file_name: r.state for r in await store.invoices.in_state("acme", *InvoiceState)}
    assert states == {"TECH-1.xml": InvoiceState.REJECTED, "TECH-2.xml": InvoiceState.REJECTED,
                      "TECH-1-fixed.xml": InvoiceState.DONE, "TECH-2-fixed.xml": InvoiceState.REJECTED}


@pytest.mark.timeout(90)
async def test_ksef_stops_answering_while_connected(sim_factory: Any, http: aiohttp.ClientSession,
                                                     tmp_path: Path) -> None:
    """The send that meets the outage stays in doubt (KSeF may have it); the invoices after it are not sent into
    the void but issued offline (offline24, unannounced); a probe notices KSeF's return and both are sent."""
    sim, config = await setup(sim_factory, http, tmp_path, offline_after_seconds=1)
    company = config.companies[0]
    async with running(config) as task:
        drop(company.folders.outbox, "C-0.xml", invoice("CONN/0"))
        await wait_for_file(company.folders.sent / "C-0.upo.xml", 20, task)
        await faults(http, sim, "5xx=1,html=1")
        drop(company.folders.outbox, "C-1.xml", invoice("CONN/1"))       # meets the outage: in doubt
        await wait_for_latarnia(config, "unreachable")
        drop(company.folders.outbox, "C-2.xml", invoice("CONN/2"))
        await wait_for_file(company.folders.offline / "C-2.offline.json", 10, task)
        assert read_json(company.folders.offline / "C-2.offline.json")["mode"] == "offline24"
        await faults(http, sim, None)
        await wait_for_file(company.folders.sent / "C-2.upo.xml", 30, task)
        await wait_for_file(company.folders.sent / "C-1.upo.xml", 30, task)
    assert not (company.folders.offline / "C-1.offline.json").exists()
    received = {r["invoiceHash"]: r for r in sim_records(sim)}
    assert received[sha256_b64(invoice("CONN/2"))]["offlineMode"] is True
    accepted = [r for r in received.values() if r["status"]["code"] == 200]
    assert len(accepted) == 3


@pytest.mark.timeout(60)
async def test_announced_unavailability_is_the_ministrys_offline_mode(sim_factory: Any, http: aiohttp.ClientSession,
                                                                      tmp_path: Path) -> None:
    """MAINTENANCE (niedostępność): issued at once, deadline the next business day after the window ends."""
    sim, config = await setup(sim_factory, http, tmp_path)
    company = config.companies[0]
    _, end = await set_outage(http, sim, 0, 5, "MAINTENANCE")
    async with running(config) as task:
        drop(company.folders.outbox, "N-1.xml", invoice("UNAV/1"))
        await wait_for_file(company.folders.offline / "N-1.offline.json", 5, task)
        offline = read_json(company.folders.offline / "N-1.offline.json")
        assert offline["mode"] == "unavailability" and offline["announced"] is True
        assert "niedostępność" in offline["modeLabel"]
        await wait_for_file(company.folders.sent / "N-1.upo.xml", 30, task)
    assert read_json(company.folders.sent / "N-1.ksef.json")["offline"]["deadline"] == end_of_day(
        next_business_day(warsaw_date(end))).isoformat()


@pytest.mark.timeout(60)
async def test_announced_failure_while_ksef_answers_sends_offline_invoices_at_once(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A failure announced on Latarnia while KSeF's API still answers (a partial outage): new invoices are issued
    offline (failure mode), and, since the probe sees KSeF answer, sent with offlineMode without waiting for the
    announcement to end."""
    sim, config = await setup(sim_factory, http, tmp_path)
    company = config.companies[0]
    start = dt.datetime.now(dt.UTC)
    window = {"from": start.isoformat(), "to": (start + dt.timedelta(seconds=40)).isoformat(), "kind": "FAILURE",
              "blocksApi": False}
    async with http.post(f"{sim.root_url}/sim/faults", json={"outages": [window]}) as response:
        assert response.status == 200
    async with running(config) as task:
        drop(company.folders.outbox, "P-1.xml", invoice("PART/1"))
        await wait_for_file(company.folders.offline / "P-1.offline.json", 5, task)
        await wait_for_file(company.folders.sent / "P-1.upo.xml", 15, task)
        assert dt.datetime.now(dt.UTC) < start + dt.timedelta(seconds=40)          # still announced
        shown = (await current_status(config)).companies[0].offline
        assert shown is not None and shown["availability"]["state"] == "failure"
        assert shown["availability"]["ksefAnswers"] is True
    assert read_json(company.folders.offline / "P-1.offline.json")["mode"] == "failure"
    assert [(r["offlineMode"], r["invoicingMode"]) for r in sim_records(sim)] == [(True, "Offline")]
