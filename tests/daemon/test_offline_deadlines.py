"""Offline deadlines (PROTOCOL.md §8.1) across the Polish calendar: weekends, Easter Monday, Corpus Christi,
1 and 3 May, 11 November, 24 December (a holiday from 2025), the year end, and a failure announced while
offline24 invoices wait."""

from __future__ import annotations

import datetime as dt

import pytest

from ksefd.clock import WARSAW
from ksefd.daemon.outbox.deadlines import FAILURE, OFFLINE24, TOTAL_FAILURE, UNAVAILABILITY, deadline, elapsed_share
from ksefd.store import Announcement

pytestmark = pytest.mark.usefixtures("english")   # the texts as their message ids (English)

D = dt.date


def warsaw(y: int, m: int, d: int, h: int = 12, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, mi, tzinfo=WARSAW)


def last_day(at: dt.datetime | None) -> dt.date:
    """The last allowed day: the deadline is the first instant of the following day, Warsaw time."""
    assert at is not None
    local = at.astimezone(WARSAW)
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    return (local - dt.timedelta(days=1)).date()


def start(event: int, at: dt.datetime, category: str = "FAILURE") -> Announcement:
    return Announcement(f"{event}-start", event, category, "FAILURE_START", "Awaria", "", at, None, 1, at)


def end(event: int, began: dt.datetime, at: dt.datetime, category: str = "FAILURE") -> Announcement:
    return Announcement(f"{event}-end", event, category, "FAILURE_END", "Awaria", "", began, at, 1, at)


def maintenance(event: int, began: dt.datetime, until: dt.datetime) -> Announcement:
    return Announcement(f"{event}-a", event, "MAINTENANCE", "MAINTENANCE_ANNOUNCEMENT", "Prace", "", began, until,
                        1, began - dt.timedelta(days=2))


@pytest.mark.parametrize(("issue", "due", "why"), [
    (D(2026, 3, 4), D(2026, 3, 5), "Wednesday -> Thursday"),
    (D(2026, 3, 6), D(2026, 3, 9), "Friday -> Monday (weekend)"),
    (D(2026, 3, 7), D(2026, 3, 9), "Saturday -> Monday"),
    (D(2026, 4, 3), D(2026, 4, 7), "Good Friday -> Tuesday (Easter Sunday, Easter Monday)"),
    (D(2026, 6, 3), D(2026, 6, 5), "Wednesday before Corpus Christi -> Friday"),
    (D(2025, 4, 30), D(2025, 5, 2), "30 April 2025 -> 2 May (1 May holiday)"),
    (D(2027, 4, 30), D(2027, 5, 4), "Friday 30 April 2027 -> Tuesday (weekend, 1 and 3 May)"),
    (D(2026, 11, 10), D(2026, 11, 12), "10 November -> 12 (11 November)"),
    (D(2025, 12, 23), D(2025, 12, 29), "23 December 2025 -> 29 (24, 25, 26 holidays, weekend)"),
    (D(2024, 12, 23), D(2024, 12, 24), "24 December 2024 was still a business day"),
    (D(2026, 12, 31), D(2027, 1, 4), "year end: 1 January, then a weekend"),
])
def test_offline24_next_business_day(issue: dt.date, due: dt.date, why: str) -> None:
    issued = warsaw(issue.year, issue.month, issue.day, 15)
    found = deadline(OFFLINE24, issue, issued, [], issued)
    assert found.basis == OFFLINE24
    assert last_day(found.at) == due, why


def test_failure_seven_business_days_across_christmas_and_new_year() -> None:
    began, ended = warsaw(2026, 12, 21, 9), warsaw(2026, 12, 22, 18)
    history = [start(1, began), end(1, began, ended)]
    found = deadline(FAILURE, D(2026, 12, 21), warsaw(2026, 12, 21, 10), history, warsaw(2026, 12, 23))
    # 23 (1), 24-27 off, 28 (2), 29 (3), 30 (4), 31 (5), 1-3 Jan off, 4 (6), 5 (7); 6 January is Epiphany.
    assert last_day(found.at) == D(2027, 1, 5)


def test_failure_without_end_has_no_deadline_yet_and_a_new_failure_restarts_the_count() -> None:
    first = warsaw(2026, 3, 2, 9)
    issued = warsaw(2026, 3, 2, 10)
    ongoing = deadline(FAILURE, D(2026, 3, 2), issued, [start(1, first)], warsaw(2026, 3, 2, 11))
    assert ongoing.at is None and ongoing.basis == FAILURE
    history = [start(1, first), end(1, first, warsaw(2026, 3, 2, 14))]
    assert last_day(deadline(FAILURE, D(2026, 3, 2), issued, history, warsaw(2026, 3, 3)).at) == D(2026, 3, 11)
    second = warsaw(2026, 3, 5, 8)
    history += [start(2, second)]
    assert deadline(FAILURE, D(2026, 3, 2), issued, history, warsaw(2026, 3, 5, 9)).at is None
    history += [end(2, second, warsaw(2026, 3, 6, 16))]
    # Friday 6 March ends it: 9..13 (5), 16 (6), 17 (7).
    assert last_day(deadline(FAILURE, D(2026, 3, 2), issued, history, warsaw(2026, 3, 7)).at) == D(2026, 3, 17)


def test_failure_announced_while_offline24_invoices_wait_moves_their_deadline() -> None:
    issued = warsaw(2026, 5, 4, 10)            # Monday; offline24 alone: Tuesday 5 May
    assert last_day(deadline(OFFLINE24, D(2026, 5, 4), issued, [], issued).at) == D(2026, 5, 5)
    began = warsaw(2026, 5, 5, 8)
    waiting = deadline(OFFLINE24, D(2026, 5, 4), issued, [start(7, began)], warsaw(2026, 5, 5, 9))
    assert waiting.at is None and waiting.basis == FAILURE
    history = [start(7, began), end(7, began, warsaw(2026, 5, 5, 20))]
    moved = deadline(OFFLINE24, D(2026, 5, 4), issued, history, warsaw(2026, 5, 6))
    assert moved.basis == FAILURE and last_day(moved.at) == D(2026, 5, 14)
    # A failure that ended before the invoice was issued changes nothing.
    later = warsaw(2026, 5, 18, 10)
    assert last_day(deadline(OFFLINE24, D(2026, 5, 18), later, history, later).at) == D(2026, 5, 19)


def test_unavailability_next_business_day_after_it_ends_and_total_failure_none() -> None:
    window = maintenance(3, warsaw(2026, 11, 10, 20), warsaw(2026, 11, 10, 23, 30))
    found = deadline(UNAVAILABILITY, D(2026, 11, 10), warsaw(2026, 11, 10, 21), [window], warsaw(2026, 11, 10, 22))
    assert found.basis == UNAVAILABILITY and last_day(found.at) == D(2026, 11, 12)
    total = deadline(TOTAL_FAILURE, D(2026, 11, 10), warsaw(2026, 11, 10, 21), [], warsaw(2026, 11, 10, 22))
    assert total.at is None and "no obligation" in total.reason


def test_elapsed_share() -> None:
    issued = warsaw(2026, 3, 4, 0)
    due = warsaw(2026, 3, 6, 0)
    assert elapsed_share(issued, due, warsaw(2026, 3, 5, 0)) == pytest.approx(0.5)
    assert elapsed_share(issued, None, issued) is None


def test_unavailability_without_a_known_window_gets_the_stricter_offline24_deadline_not_none() -> None:
    # Latarnia said MAINTENANCE, but the announcement's window starts after the moment of issue (or is missing).
    late = maintenance(7, warsaw(2026, 11, 10, 22), warsaw(2026, 11, 11, 2))
    found = deadline(UNAVAILABILITY, D(2026, 11, 10), warsaw(2026, 11, 10, 21), [late], warsaw(2026, 11, 10, 21, 30))
    assert found.at is not None and last_day(found.at) == D(2026, 11, 12)     # 11 November is a holiday
    found = deadline(UNAVAILABILITY, D(2026, 11, 10), warsaw(2026, 11, 10, 21), [], warsaw(2026, 11, 10, 21, 30))
    assert found.at is not None and found.basis == UNAVAILABILITY
