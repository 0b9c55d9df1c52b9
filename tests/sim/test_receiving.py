"""Receiving over HTTP (issue #3 item 2; PROTOCOL.md §6.1, §6.2, §14.4): the metadata query per subject
type with its filters, paging, sorting, 10 000-record cap, HWM and 100-day range; the download of one
invoice's exact bytes."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from ksefd.sim.clock import ManualClock
from tests.conftest import SAMPLES
from tests.support.ksef_auth import (
    _finish,
    access_token,
    auth_token_request,
    challenge,
    self_signed_certificate,
    sign_auth_request,
    submit_xades,
)
from tests.support.online_flow import expect_error, sim_config
from tests.support.receive_flow import Receiver, filters, seed, stamp
from tests.support.session_crypto import sha256_b64

TEMPLATE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()   # seller 9999999999, buyer 1111111111
SELLER, BUYER, STRANGER = "9999999999", "1111111111", "5555555555"
READ = ["InvoiceRead"]


def config(**settings: Any) -> Any:
    return sim_config(access_token_ttl_s=24 * 3600, **settings)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def download(receiver: Receiver, number: str) -> aiohttp.ClientResponse:
    return await receiver.http.get(f"{receiver.base_url}/invoices/ksef/{number}", headers=receiver.headers)


async def test_the_buyer_sees_the_invoice_as_subject2_and_downloads_its_bytes(sim_factory: Any,
                                                                              http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    start = now() - dt.timedelta(hours=1)
    sent = await seed(http, sim.base_url, await access_token(http, sim.base_url, SELLER), TEMPLATE, 3,
                      buyer_nip=BUYER)
    buyer = Receiver(http, sim.base_url, await access_token(http, sim.base_url, BUYER, READ))
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, READ))
    stranger = Receiver(http, sim.base_url, await access_token(http, sim.base_url, STRANGER, READ))

    found = await buyer.query(filters("Subject2", start))
    assert (found["hasMore"], found["isTruncated"], len(found["invoices"])) == (False, False, 3)
    assert "permanentStorageHwmDate" in found
    for meta in found["invoices"]:
        assert meta["seller"]["nip"] == SELLER and meta["buyer"]["identifier"] == {"type": "Nip", "value": BUYER}
        assert meta["invoiceHash"] == sha256_b64(sent[meta["invoiceNumber"]])
        assert meta["acquisitionDate"] < meta["permanentStorageDate"]
    assert (await buyer.query(filters("Subject1", start)))["invoices"] == []
    assert len((await seller.query(filters("Subject1", start)))["invoices"]) == 3
    assert (await stranger.query(filters("Subject2", start)))["invoices"] == []

    meta = found["invoices"][0]
    async with await download(buyer, meta["ksefNumber"]) as resp:
        assert resp.status == 200 and resp.content_type == "application/xml"
        data = await resp.read()
        assert data == sent[meta["invoiceNumber"]]
        assert resp.headers["x-ms-meta-hash"] == sha256_b64(data)
    async with await download(stranger, meta["ksefNumber"]) as resp:
        await expect_error(resp, 21164)                     # not a party: as if it did not exist
    async with await download(buyer, f"{SELLER}-20260101-0123456789AB-00") as resp:
        await expect_error(resp, 21164)


async def test_filters_paging_and_sorting(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    start = now() - dt.timedelta(hours=1)
    today = dt.datetime.now(ZoneInfo("Europe/Warsaw")).date()
    token = await access_token(http, sim.base_url, SELLER)
    await seed(http, sim.base_url, token, TEMPLATE, 12, issue_date=today)
    seller = Receiver(http, sim.base_url, token)
    base = filters("Subject1", start)

    first = await seller.query(base, pageSize=10)
    second = await seller.query(base, pageSize=10, pageOffset=1)
    assert (len(first["invoices"]), first["hasMore"]) == (10, True)
    assert (len(second["invoices"]), second["hasMore"]) == (2, False)
    ascending = [m["ksefNumber"] for m in first["invoices"] + second["invoices"]]
    stored = [m["permanentStorageDate"] for m in first["invoices"] + second["invoices"]]
    assert stored == sorted(stored) and len(set(ascending)) == 12
    descending = await seller.query(base, pageSize=20, sortOrder="Desc")
    assert [m["ksefNumber"] for m in descending["invoices"]] == ascending[::-1]

    sample = first["invoices"][3]
    gross = sample["grossAmount"]

    async def count(**more: Any) -> int:
        body = await seller.query({**base, **more}, pageSize=50)
        return len(body["invoices"])

    assert await count(invoiceNumber=sample["invoiceNumber"]) == 1
    assert await count(ksefNumber=sample["ksefNumber"]) == 1
    assert await count(sellerNip=SELLER) == 12 and await count(sellerNip=BUYER) == 0
    assert await count(buyerIdentifier={"type": "Nip", "value": BUYER}) == 12
    assert await count(buyerIdentifier={"type": "Nip", "value": STRANGER}) == 0
    assert await count(buyerIdentifier={"type": "None"}) == 0
    assert await count(amount={"type": "Brutto", "from": gross - 0.01, "to": gross + 0.01}) == 12
    assert await count(amount={"type": "Netto", "from": gross + 1}) == 0
    assert await count(currencyCodes=[sample["currency"]]) == 12 and await count(currencyCodes=["CNH"]) == 0
    assert await count(invoicingMode=sample["invoicingMode"]) == 12
    assert await count(invoicingMode="Offline" if sample["invoicingMode"] == "Online" else "Online") == 0
    assert await count(invoiceTypes=["Vat"]) == 12 and await count(invoiceTypes=["Kor", "Zal"]) == 0
    assert await count(formType="FA") == 12 and await count(formType="PEF") == 0
    assert await count(hasAttachment=False) == 12 and await count(hasAttachment=True) == 0
    assert await count(isSelfInvoicing=True) == 0

    midnight = dt.datetime.combine(today, dt.time(), ZoneInfo("Europe/Warsaw"))
    by_issue = await seller.query(filters("Subject1", midnight, date_type="Issue"), pageSize=50)
    assert len(by_issue["invoices"]) == 12 and "permanentStorageHwmDate" not in by_issue
    tomorrow = filters("Subject1", midnight + dt.timedelta(days=1), date_type="Issue",
                       end=midnight + dt.timedelta(days=2))
    assert (await seller.query(tomorrow))["invoices"] == []
    by_invoicing = await seller.query(filters("Subject1", start, date_type="Invoicing"), pageSize=50)
    assert len(by_invoicing["invoices"]) == 12


async def test_cap_truncates_and_the_documented_continuation_finds_everything(sim_factory: Any,
                                                                              http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config(query_cap=5))
    start = now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    await seed(http, sim.base_url, token, TEMPLATE, 12)
    seller = Receiver(http, sim.base_url, token)
    seen: set[str] = set()
    body = filters("Subject1", start)
    offset, rounds = 0, 0
    while True:                   # the algorithm of openapi.json POST /invoices/query/metadata
        rounds += 1
        page = await seller.query(body, pageSize=10, pageOffset=offset)
        seen |= {m["ksefNumber"] for m in page["invoices"]}
        if not page["hasMore"]:
            break
        if page["isTruncated"]:
            assert len(page["invoices"]) == 5
            body = filters("Subject1", page["invoices"][-1]["permanentStorageDate"])
            offset = 0
        else:
            offset += 1
    assert len(seen) == 12 and rounds == 3


async def test_hwm_restrict_and_21183(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(hwm_lag_s=60), clock=clock)
    opened = clock.now()
    token = await access_token(http, sim.base_url, SELLER)
    await seed(http, sim.base_url, token, TEMPLATE, 2)
    seller = Receiver(http, sim.base_url, token)
    clock.advance(1)                                         # past the invoices' permanentStorageDate
    start = opened - dt.timedelta(hours=1)

    restricted = await seller.query(filters("Subject1", start, restrict=True))
    assert restricted["invoices"] == []                      # stored after the HWM: not final yet
    by_invoicing = await seller.query(filters("Subject1", start, date_type="Invoicing", restrict=True))
    assert len(by_invoicing["invoices"]) == 2                # restrict applies to PermanentStorage only
    assert restricted["permanentStorageHwmDate"] == _iso(clock.now() - dt.timedelta(seconds=60))
    assert len((await seller.query(filters("Subject1", start)))["invoices"]) == 2

    clock.advance(60)
    restricted = await seller.query(filters("Subject1", start, restrict=True))
    assert len(restricted["invoices"]) == 2
    assert all(m["permanentStorageDate"] <= restricted["permanentStorageHwmDate"] for m in restricted["invoices"])
    after_hwm = filters("Subject1", clock.now() - dt.timedelta(seconds=30), restrict=True)
    async with seller.query_raw(after_hwm) as resp:
        await expect_error(resp, 21183)
    assert "permanentStorageHwmDate" not in await seller.query(filters("Subject1", start, date_type="Invoicing"))


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0+00:00"


async def test_a_range_over_100_days_is_21405(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, READ))
    moment = now()
    async with seller.query_raw(filters("Subject1", moment - dt.timedelta(days=100, seconds=1))) as resp:
        detail = await expect_error(resp, 21405)
    assert "100" in detail["details"][0]
    await seller.query(filters("Subject1", moment - dt.timedelta(days=99)))
    async with seller.query_raw(filters("Subject1", moment, end=moment - dt.timedelta(days=1))) as resp:
        await expect_error(resp, 21405)
    exactly = filters("Subject1", moment - dt.timedelta(days=100), end=moment)
    await seller.query(exactly)
    assert stamp(moment).endswith("Z")


@pytest.mark.sends_invalid_requests
async def test_bad_parameters_are_21405(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, READ))
    body = filters("Subject1", now() - dt.timedelta(days=1))
    for params in ({"pageSize": 5}, {"pageSize": 251}, {"pageOffset": -1}, {"sortOrder": "Up"}, {"pageSize": "x"}):
        async with seller.query_raw(body, **params) as resp:
            await expect_error(resp, 21405)
    for bad in ({**body, "subjectType": "Subject4"}, {**body, "dateRange": {**body["dateRange"], "dateType": "Now"}},
                {"subjectType": "Subject1"}, {**body, "dateRange": {**body["dateRange"], "from": "yesterday"}},
                {**body, "currencyCodes": ["ZZZ"]}, {**body, "amount": {"from": 1}}):
        async with seller.query_raw(bad) as resp:
            await expect_error(resp, 21405)
    async with await download(seller, f"{SELLER}-20260101-0123456789AB") as resp:
        detail = await expect_error(resp, 21405)                 # not a KSeF number: no checksum part
    assert "ksefNumber" in detail["details"][0]


async def test_not_yet_stored_is_21165(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    sim = await sim_factory(config=config(), clock=clock)
    token = await access_token(http, sim.base_url, SELLER)
    sent = await seed(http, sim.base_url, token, TEMPLATE, 1)
    record = next(iter(sim.world.store.values("invoices")))     # its KSeF number; queries do not show it yet
    seller = Receiver(http, sim.base_url, token)
    async with await download(seller, record["ksefNumber"]) as resp:
        await expect_error(resp, 21165)                     # permanentStorageDate is still ahead
    clock.advance(1)
    async with await download(seller, record["ksefNumber"]) as resp:
        assert resp.status == 200 and await resp.read() == sent["R/0"]


WITH_THIRD_SUBJECT = (SAMPLES / "invoices" / "FA_3_Przyklad_10.xml").read_bytes()      # Podmiot3 3333333333
AUTHORIZED = "4444444444"
WITH_AUTHORIZED = TEMPLATE.replace(b"<Fa>", (
    f"<PodmiotUpowazniony><DaneIdentyfikacyjne><NIP>{AUTHORIZED}</NIP><Nazwa>Komornik Sądowy</Nazwa>"
    "</DaneIdentyfikacyjne><Adres><KodKraju>PL</KodKraju><AdresL1>ul. Prosta 1</AdresL1></Adres>"
    "<RolaPU>1</RolaPU></PodmiotUpowazniony><Fa>").encode(), 1)


async def test_third_subject_and_authorized_subject_views(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    start = now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    third_sent = await seed(http, sim.base_url, token, WITH_THIRD_SUBJECT, 2, prefix="P3")
    await seed(http, sim.base_url, token, WITH_AUTHORIZED, 2, prefix="PU")
    third = Receiver(http, sim.base_url, await access_token(http, sim.base_url, "3333333333", READ))
    authorized = Receiver(http, sim.base_url, await access_token(http, sim.base_url, AUTHORIZED, READ))

    as_third = (await third.query(filters("Subject3", start)))["invoices"]
    assert sorted(m["invoiceNumber"] for m in as_third) == sorted(third_sent)
    assert all(any(s["identifier"] == {"type": "Nip", "value": "3333333333"} for s in m["thirdSubjects"])
               for m in as_third)
    async with await download(third, as_third[0]["ksefNumber"]) as resp:
        assert resp.status == 200 and await resp.read() == third_sent[as_third[0]["invoiceNumber"]]

    as_authorized = (await authorized.query(filters("SubjectAuthorized", start)))["invoices"]
    assert len(as_authorized) == 2
    assert {(m["authorizedSubject"]["nip"], m["authorizedSubject"]["role"]) for m in as_authorized} == {
        (AUTHORIZED, 1)}
    for subject in ("Subject1", "Subject2", "Subject3"):
        assert (await authorized.query(filters(subject, start)))["invoices"] == []


async def test_the_hwm_is_constant_across_the_pages_of_one_query(sim_factory: Any,
                                                                   http: aiohttp.ClientSession) -> None:
    """openapi.json: permanentStorageHwmDate "is constant for all pages of the same query and depends neither
    on paging nor on sorting"; under PRD limits those pages are minutes apart, so the HWM must not follow the
    clock between them. A query starts at pageOffset 0."""
    clock = ManualClock()
    sim = await sim_factory(config=config(hwm_lag_s=5), clock=clock)
    start = clock.now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    await seed(http, sim.base_url, token, TEMPLATE, 12)
    clock.advance(10)
    seller = Receiver(http, sim.base_url, token)
    body = filters("Subject1", start, restrict=True)

    first = await seller.query(body, pageSize=10)
    assert first["hasMore"] and first["permanentStorageHwmDate"] == _iso(clock.now() - dt.timedelta(seconds=5))
    clock.advance(120)
    await seed(http, sim.base_url, token, TEMPLATE, 3, prefix="LATER")      # stored after the pinned HWM
    clock.advance(120)
    second = await seller.query(body, pageSize=10, pageOffset=1, sortOrder="Desc")
    assert second["permanentStorageHwmDate"] == first["permanentStorageHwmDate"]
    ascending = await seller.query(body, pageSize=10, pageOffset=1)
    assert ascending["permanentStorageHwmDate"] == first["permanentStorageHwmDate"]
    assert (len(ascending["invoices"]), ascending["hasMore"]) == (2, False)  # the later three are past this HWM

    again = await seller.query(body, pageSize=10)                            # a new query: the HWM moved on
    assert again["permanentStorageHwmDate"] == _iso(clock.now() - dt.timedelta(seconds=5))
    following = await seller.query(body, pageSize=10, pageOffset=1)
    assert following["permanentStorageHwmDate"] == again["permanentStorageHwmDate"]
    assert len(following["invoices"]) == 5
    other = await seller.query(filters("Subject1", start + dt.timedelta(seconds=1), restrict=True), pageOffset=1)
    assert other["permanentStorageHwmDate"] == again["permanentStorageHwmDate"]   # its own pin, made now


async def test_the_hwm_of_a_past_window_is_its_end(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    """openapi.json permanentStorageHwmDate: near now it is slightly behind the query's upper bound, "for older
    periods it agrees with the query's conditions"."""
    clock = ManualClock()
    sim = await sim_factory(config=config(hwm_lag_s=5), clock=clock)
    seller = Receiver(http, sim.base_url, await access_token(http, sim.base_url, SELLER, READ))
    end = clock.now() - dt.timedelta(hours=1)
    past = await seller.query(filters("Subject1", end - dt.timedelta(days=1), end=end))
    assert past["permanentStorageHwmDate"] == _iso(end)
    recent = await seller.query(filters("Subject1", end, end=clock.now() + dt.timedelta(minutes=1)))
    assert recent["permanentStorageHwmDate"] == _iso(clock.now() - dt.timedelta(seconds=5))
    package, _ = await seller.export(filters("Subject1", end - dt.timedelta(days=1), end=end))
    assert package["permanentStorageHwmDate"] == _iso(end)


INTERNAL_ID = f"{SELLER}-12345"


async def internal_id_login(http: aiohttp.ClientSession, base_url: str) -> str:
    """XAdES as the NIP's owner into the InternalId context NIP-12345 (a VAT group member, a JST unit)."""
    found = await challenge(http, base_url)
    cert, key = self_signed_certificate(nip=SELLER)
    xml = auth_token_request(found["challenge"], context_type="InternalId", context_value=INTERNAL_ID)
    init = await submit_xades(http, base_url, sign_auth_request(xml, cert, key))
    return (await _finish(http, base_url, init)).access_token


async def test_an_internal_id_context_sees_its_podmiot3_invoices_only(sim_factory: Any,
                                                                       http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=config())
    start = now() - dt.timedelta(hours=1)
    token = await access_token(http, sim.base_url, SELLER)
    unit = WITH_THIRD_SUBJECT.replace(b"<NIP>3333333333</NIP>", f"<IDWew>{INTERNAL_ID}</IDWew>".encode())
    unit_sent = await seed(http, sim.base_url, token, unit, 2, prefix="JST")
    await seed(http, sim.base_url, token, WITH_THIRD_SUBJECT, 1, prefix="OTHER")   # Podmiot3 3333333333
    await seed(http, sim.base_url, token, TEMPLATE, 1, prefix="PLAIN")            # the parent NIP's own sale
    internal = Receiver(http, sim.base_url, await internal_id_login(http, sim.base_url))

    as_third = (await internal.query(filters("Subject3", start)))["invoices"]
    assert sorted(m["invoiceNumber"] for m in as_third) == sorted(unit_sent)
    assert all({"type": "InternalId", "value": INTERNAL_ID} in [s["identifier"] for s in m["thirdSubjects"]]
               for m in as_third)
    for subject in ("Subject1", "Subject2", "SubjectAuthorized"):           # not the parent NIP's invoices
        assert (await internal.query(filters(subject, start)))["invoices"] == []
    plain = (await Receiver(http, sim.base_url, token).query(filters("Subject1", start), pageSize=50))["invoices"]
    parents = [m["ksefNumber"] for m in plain if m["invoiceNumber"] == "PLAIN/0"]
    async with await download(internal, parents[0]) as resp:
        await expect_error(resp, 21164)
    async with await download(internal, as_third[0]["ksefNumber"]) as resp:
        assert await resp.read() == unit_sent[as_third[0]["invoiceNumber"]]

    package, files = await internal.export(filters("Subject3", start))
    assert package["invoiceCount"] == 2 and len(files) == 3
    async with internal.start_raw(await internal.export_body(filters("Subject1", start))) as resp:
        detail = await expect_error(resp, 21181)
    assert detail["details"] == ["Nie można wyeksportować paczki faktur dla wybranego podmiotu (Subject1) i "
                                 "zalogowanego identyfikatora kontekstu (InternalId)."]
