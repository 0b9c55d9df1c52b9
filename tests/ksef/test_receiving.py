"""Receiving (issue #4 item 6, PROTOCOL.md §6.1-6.2, §14.4): filters, metadata query paging and single
download; the network parts against the simulator over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest

from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.receiving import (
    MAX_WINDOW,
    check_ksef_number,
    parse_instant,
    query_filters,
)

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
                                   "5265877635-20250826-0100001AF629-AF.xml"])
def test_ksef_numbers_from_the_network_are_checked(value: object) -> None:
    with pytest.raises(ProtocolError, match="not a KSeF number"):
        check_ksef_number(value)
    assert check_ksef_number("5265877635-20250826-0100001AF629-AF") == "5265877635-20250826-0100001AF629-AF"
