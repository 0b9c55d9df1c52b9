"""Fault switches (issue #3 item 4): each one set at start (SimConfig.faults, what `ksefd sim --faults`
passes) or at run time through /sim/faults, off by default, repeatable through the seed."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.samples import make_invoice
from ksefd.sim.app import create_app
from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.batch_flow import Batch, invoices, zip_archive
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect, expect_error, sim_config
from tests.support.receive_flow import Receiver, filters, seed

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()
NIP = "9999999999"


def config(faults: str = "", **settings: Any) -> Any:
    return sim_config(faults=faults, access_token_ttl_s=24 * 3600, **settings)


async def public_keys(http: aiohttp.ClientSession, sim: Any) -> tuple[int, str, str, str]:
    async with http.get(f"{sim.base_url}/security/public-key-certificates") as resp:
        return resp.status, resp.content_type, resp.headers.get("X-Sim-Fault", ""), await resp.text()


async def set_faults(http: aiohttp.ClientSession, sim: Any, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{sim.root_url}/sim/faults", json=body) as resp:
        found: dict[str, Any] = await expect(resp, 200)
        return found


async def test_no_faults_by_default_and_bad_switches_are_refused(sim_factory: Any,
                                                                  http: aiohttp.ClientSession) -> None:
    sim = await sim_factory()
    async with http.get(f"{sim.root_url}/sim/faults") as resp:
        current = await expect(resp, 200)
    assert current["5xx"] == 0 and current["drop"] == 0 and current["outages"] == []
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "5xx=2"}) as resp:
        assert resp.status == 400 and "między 0 a 1" in (await resp.json())["error"]     # the reader's language
    async with http.post(f"{sim.root_url}/sim/faults", json={"spec": "explode=1"}) as resp:
        assert resp.status == 400 and "5xx" in (await resp.json())["error"]
    with pytest.raises(ValueError, match="outage"):
        create_app(sim_config(faults="outage=soon"))


def test_the_cli_refuses_a_bad_switch_with_exit_code_78() -> None:
    result = subprocess.run([sys.executable, "-m", "ksefd", "sim", "--port", "0", "--faults", "5xx=lots"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 78 and "--faults" in result.stderr and "5xx" in result.stderr
    # in the reader's language (Polish by default, issue #14), naming the switch and what it expects
    assert "przełącznik awarii 5xx='lots': oczekiwano liczby (np. 0.5)" in result.stderr


def test_a_bad_switch_is_explained_in_english_when_asked() -> None:
    from ksefd import i18n
    from ksefd.sim import faults
    with i18n.using("en"), pytest.raises(ValueError, match="a share must be between 0 and 1"):
        faults.parse("drop=1.5", dt.datetime(2026, 12, 7, tzinfo=dt.UTC))


async def test_share_of_5xx_with_html_pages_repeatable_by_seed(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config("5xx=0.3,html=0.5,seed=7"))
    first = [await public_keys(http, sim) for _ in range(200)]
    failures = [r for r in first if r[0] >= 500]
    assert 40 <= len(failures) <= 80
    assert {r[0] for r in failures} <= {500, 502, 503, 504} and {r[2] for r in failures} == {"5xx"}
    assert any(r[1] == "text/html" and "<html>" in r[3] for r in failures)
    assert any(r[3] == "" for r in failures)                             # some with no body at all
    assert all(r[0] == 200 for r in first if r not in failures)

    await set_faults(http, sim, {"spec": "5xx=0.3,html=0.5,seed=7"})     # the same seed, the same run
    again = [await public_keys(http, sim) for _ in range(200)]
    assert [r[0] for r in again] == [r[0] for r in first]
    async with http.delete(f"{sim.root_url}/sim/faults") as resp:
        assert resp.status == 200
    assert {(await public_keys(http, sim))[0] for _ in range(20)} == {200}


async def test_dropped_connection_after_processing(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    await set_faults(http, sim, {"spec": "drop=1"})
    person = {"nip": "7777777777", "pesel": "90010112345", "isBailiff": False, "description": "drop test"}
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
            await resp.read()
    await set_faults(http, sim, {"spec": ""})
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        await expect_error(resp, 30001)                                  # the lost request did happen


async def test_added_latency(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config("latency=0.3"))
    started = time.perf_counter()
    assert (await public_keys(http, sim))[0] == 200
    assert time.perf_counter() - started >= 0.3

    await set_faults(http, sim, {"spec": "latency=0.2,latency_share=0.5,seed=3"})     # only a share of them
    slow = 0
    for _ in range(12):
        started = time.perf_counter()
        assert (await public_keys(http, sim))[0] == 200
        slow += time.perf_counter() - started >= 0.2
    assert 2 <= slow <= 10


async def test_outage_window_and_lighthouse(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config("outage=60:120:MAINTENANCE,outage=600:60:FAILURE"), clock=clock)

    async def lighthouse(path: str) -> Any:
        async with http.get(f"{sim.root_url}{path}") as resp:
            return await expect(resp, 200)

    assert await lighthouse("/status") == {"status": "AVAILABLE", "messages": []}
    announced = await lighthouse("/messages")
    assert [(m["category"], m["type"]) for m in announced] == [("MAINTENANCE", "MAINTENANCE_ANNOUNCEMENT")]
    assert (await public_keys(http, sim))[0] == 200

    clock.advance(60)
    status, content_type, fault, _ = await public_keys(http, sim)
    assert (status, content_type, fault) == (503, "text/html", "outage")
    during = await lighthouse("/status")
    assert during["status"] == "MAINTENANCE" and during["messages"][0]["type"] == "MAINTENANCE_ANNOUNCEMENT"
    async with http.post(f"{sim.base_url}/auth/challenge") as resp:
        assert resp.status == 503 and int(resp.headers["Retry-After"]) == 120

    clock.advance(120)
    assert (await public_keys(http, sim))[0] == 200 and (await lighthouse("/status"))["status"] == "AVAILABLE"
    clock.advance(600 - 180)
    failure = await lighthouse("/status")
    assert failure["status"] == "FAILURE" and [m["type"] for m in failure["messages"]] == ["FAILURE_START"]
    clock.advance(60)
    types = [(m["category"], m["type"]) for m in await lighthouse("/messages")]
    assert ("FAILURE", "FAILURE_START") in types and ("FAILURE", "FAILURE_END") in types
    assert (await lighthouse("/status"))["status"] == "AVAILABLE"

    start = clock.now() + dt.timedelta(seconds=10)
    await set_faults(http, sim, {"outages": [{"from": start.isoformat(), "to": (start + dt.timedelta(hours=1))
                                              .isoformat(), "kind": "TOTAL_FAILURE", "text": "Awaria testowa"}]})
    clock.advance(10)
    total = await lighthouse("/status")
    assert total["status"] == "TOTAL_FAILURE" and total["messages"][0]["text"] == "Awaria testowa"


async def test_slow_upo_generation(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config("upo_delay=30"), clock=clock)
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()
    await online.submit(make_invoice(TEMPLATE, number="UPO/1"))
    await online.close()
    await asyncio.sleep(0.3)
    assert (await online.status())["status"]["code"] == 170                 # the UPO is not ready yet
    clock.advance(30)
    final = await online.wait_session()
    assert final["status"]["code"] == 200 and final["upo"]["pages"]


async def test_session_temporarily_unavailable_21184(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    token = await access_token(http, sim.base_url, NIP)
    first = Online(http, sim.base_url, token)
    await first.open()
    await set_faults(http, sim, {"unavailableSessions": [first.reference]})
    invoice = make_invoice(TEMPLATE, number="U/1")
    async with first.send_raw(first.keys.send_body(invoice)) as resp:
        detail = await expect_error(resp, 21184)
    assert first.reference in detail["details"][0]
    second = Online(http, sim.base_url, token)                              # MF: open a new session, resend
    await second.open()
    assert (await second.submit(invoice))["status"]["code"] == 200

    await set_faults(http, sim, {"spec": "unavailable=1"})                 # by chance, per send
    async with second.send_raw(second.keys.send_body(make_invoice(TEMPLATE, number="U/2"))) as resp:
        await expect_error(resp, 21184)


async def test_late_commit_behind_the_hwm(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config("late=1,late_by=60", hwm_lag_s=5), clock=clock)
    start = clock.now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, NIP)
    await seed(http, sim.base_url, token, TEMPLATE, 2)
    seller = Receiver(http, sim.base_url, token)
    clock.advance(10)
    early = await seller.query(filters("Subject1", start, restrict=True))
    assert early["invoices"] == []                       # a client would move its checkpoint to this HWM ...
    checkpoint = early["permanentStorageHwmDate"]
    hidden = next(iter(sim.world.store.values("invoices")))["ksefNumber"]
    async with http.get(f"{sim.base_url}/invoices/ksef/{hidden}", headers=seller.headers) as resp:
        await expect_error(resp, 21165)
    clock.advance(60)
    late = await seller.query(filters("Subject1", start, restrict=True))
    assert len(late["invoices"]) == 2                    # ... but they appear behind it, committed late
    assert all(m["permanentStorageDate"] < checkpoint for m in late["invoices"])
    assert (await seller.query(filters("Subject1", checkpoint, restrict=True)))["invoices"] == []


async def test_session_expiry(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config("session_ttl=60"), clock=clock)
    token = await access_token(http, sim.base_url, NIP)
    online = Online(http, sim.base_url, token)
    opened = await online.open()
    assert opened["validUntil"] == _iso(clock.now() + dt.timedelta(seconds=60))
    clock.advance(61)
    async with online.send_raw(online.keys.send_body(make_invoice(TEMPLATE, number="E/1"))) as resp:
        await expect_error(resp, 21180)

    await set_faults(http, sim, {"spec": ""})
    other = Online(http, sim.base_url, token)
    await other.open()
    async with http.post(f"{sim.root_url}/sim/sessions/{other.reference}/expire") as resp:
        assert resp.status == 200
    async with other.send_raw(other.keys.send_body(make_invoice(TEMPLATE, number="E/2"))) as resp:
        await expect_error(resp, 21180)

    batch = Batch(http, sim.base_url, token)                                # a batch: its upload window ends
    archive = zip_archive(invoices(TEMPLATE, 1))
    await batch.open(await batch.open_body(archive, batch.encrypt([archive])))
    async with http.post(f"{sim.root_url}/sim/sessions/{batch.reference}/expire") as resp:
        assert resp.status == 200
    assert (await batch.status())["status"]["code"] == 440


def _iso(when: dt.datetime) -> str:
    when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0+00:00"


async def test_key_rotation_and_clock_controls(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(), clock=clock)
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, NIP))
    await online.open()                                                     # caches the current key
    async with http.post(f"{sim.root_url}/sim/keys/rotate", json={"usage": "SymmetricKeyEncryption"}) as resp:
        rotated = await expect(resp, 200)
    assert rotated["publicKeyId"] != online.key_id
    async with await online.open_raw() as resp:
        await expect_error(resp, 21470)                                     # the withdrawn key

    before = clock.now()
    async with http.post(f"{sim.root_url}/sim/clock", json={"advance": 90}) as resp:
        moved = await expect(resp, 200)
    assert moved["manual"] and clock.now() - before == dt.timedelta(seconds=90)
    system = await sim_factory(config=config())
    async with http.post(f"{system.root_url}/sim/clock", json={"advance": 1}) as resp:
        assert resp.status == 400
