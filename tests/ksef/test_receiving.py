"""Receiving (issue #4 item 6, PROTOCOL.md §6.1-6.2, §14.4): filters, metadata query paging and single
download; the network parts against the simulator over HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ksefd.ksef.crypto import sha256_b64
from ksefd.ksef.errors import KsefException, ProtocolError
from ksefd.ksef.receiving import (
    MAX_WINDOW,
    check_ksef_number,
    parse_instant,
    query_filters,
)
from ksefd.sim.config import SimConfig
from tests.ksef.receiving_support import put_invoices

NOW = dt.datetime(2026, 10, 20, 12, 0, tzinfo=dt.UTC)


def test_default_filters_follow_the_incremental_recipe() -> None:
    filters = query_filters("Subject2", "2026-10-01T00:00:00.1234567+00:00", now=NOW)
    assert filters == {"subjectType": "Subject2", "dateRange": {
        "dateType": "PermanentStorage", "from": "2026-10-01T00:00:00.1234567+00:00",
        "restrictToPermanentStorageHwmDate": True}}                   # open end, KSeF's string kept verbatim


def test_a_window_longer_than_100_days_is_capped_with_an_explicit_offset() -> None:
    start = NOW - dt.timedelta(days=150)
    filters = query_filters("Subject1", start, now=NOW)
    end = parse_instant(filters["dateRange"]["to"])
    assert filters["dateRange"]["from"].endswith("+00:00") and filters["dateRange"]["to"].endswith("+00:00")
    assert end - start == MAX_WINDOW
    assert dt.timedelta(days=100) > MAX_WINDOW
    explicit = query_filters("Subject1", start, NOW, now=NOW)
    assert parse_instant(explicit["dateRange"]["to"]) == end
    short = query_filters("Subject1", NOW - dt.timedelta(days=3), NOW - dt.timedelta(days=1), now=NOW)
    assert parse_instant(short["dateRange"]["to"]) == NOW - dt.timedelta(days=1)
    near_limit = query_filters("Subject1", NOW - dt.timedelta(days=99, hours=23, minutes=58), now=NOW)
    assert "to" in near_limit["dateRange"]                              # the server's "now" would tip it over


def test_dates_without_an_offset_or_timezone_are_refused() -> None:
    with pytest.raises(ValueError, match="no offset"):
        query_filters("Subject2", "2026-10-01T00:00:00", now=NOW)
    with pytest.raises(ValueError, match="no timezone"):
        query_filters("Subject2", dt.datetime(2026, 10, 1), now=NOW)
    with pytest.raises(ValueError, match="subject_type"):
        query_filters("Buyer", NOW, now=NOW)


def test_other_date_types_do_not_restrict_to_the_hwm_and_extra_filters_pass_through() -> None:
    filters = query_filters("Subject1", NOW - dt.timedelta(days=1), date_type="Invoicing", now=NOW,
                            sellerNip="5265877635")
    assert "restrictToPermanentStorageHwmDate" not in filters["dateRange"]
    assert filters["sellerNip"] == "5265877635"


def test_instants_with_seven_fraction_digits_and_z() -> None:
    assert parse_instant("2026-10-01T00:00:00.1234567+02:00") == dt.datetime(2026, 9, 30, 22, 0, 0, 123456,
                                                                             tzinfo=dt.UTC)
    assert parse_instant("2026-10-01T00:00:00Z") == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("value", ["../../etc/passwd", "5265877635-20250826-0100001AF629-af", 42, None,
                                   "5265877635-20250826-0100001AF629-AF.xml",
                                   "5265877635-20250826-0100001AF629-AF\n"])
def test_ksef_numbers_from_the_network_are_checked(value: object) -> None:
    with pytest.raises(ProtocolError, match="not a KSeF number"):
        check_ksef_number(value)
    assert check_ksef_number("5265877635-20250826-0100001AF629-AF") == "5265877635-20250826-0100001AF629-AF"


# -- against the simulator, over HTTP ------------------------------------------------------------------------

def receiving_sim(**settings: Any) -> SimConfig:
    return SimConfig(limits_profile="off", hwm_lag_s=0.0, **settings)


async def test_metadata_query_pages_through_truncation_without_gaps_or_duplicates(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim(query_cap=25))          # KSeF's cap is 10 000
    ctx = await token_context(sim)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    sent = await put_invoices(ctx, tmp_path, 60)
    result = await ctx.receiver().query_all(query_filters("Subject1", since), page_size=10)
    numbers = [m["ksefNumber"] for m in result.invoices]
    assert sorted(numbers) == sorted(sent) and len(numbers) == len(set(numbers))
    stored = [parse_instant(m["permanentStorageDate"]) for m in result.invoices]
    assert stored == sorted(stored)                                      # ascending, as §6.1 requires
    assert result.pages > 6                                             # it narrowed after each truncation
    assert result.permanent_storage_hwm_date is not None


async def test_metadata_pages_by_offset(sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim())
    ctx = await token_context(sim)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    sent = await put_invoices(ctx, tmp_path, 12)
    receiver = ctx.receiver()
    page = await receiver.query_page(query_filters("Subject1", since), page_size=10)
    assert len(page.invoices) == 10 and page.has_more and not page.is_truncated
    second = await receiver.query_page(query_filters("Subject1", since), page_offset=1, page_size=10)
    assert {m["ksefNumber"] for m in page.invoices + second.invoices} == set(sent)


async def test_a_window_starting_after_the_hwm_is_refused(sim_factory: Any, token_context: Callable[..., Any]) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off", hwm_lag_s=60.0))
    ctx = await token_context(sim)
    with pytest.raises(KsefException) as beyond:
        await ctx.receiver().query_page(query_filters("Subject1", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)))
    assert 21183 in beyond.value.codes                                  # from after the HWM (§6.1)


async def test_single_download_returns_the_exact_bytes(
        sim_factory: Any, token_context: Callable[..., Any], tmp_path: Path) -> None:
    sim = await sim_factory(config=receiving_sim())
    ctx = await token_context(sim)
    sent = await put_invoices(ctx, tmp_path, 2, start=100)
    receiver = ctx.receiver()
    for number, data in sent.items():
        assert await receiver.download(number, expected_hash=sha256_b64(data)) == data
    number = next(iter(sent))
    with pytest.raises(ProtocolError, match="invoiceHash"):
        await receiver.download(number, expected_hash=sha256_b64(b"other bytes"))
    missing = number[:-2] + ("00" if not number.endswith("00") else "01")
    with pytest.raises(KsefException) as unknown:
        await receiver.download(missing)
    assert 21164 in unknown.value.codes
