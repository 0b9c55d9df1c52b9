"""The legal deadline of one offline invoice (PROTOCOL.md §8.1), from its mode, its issue date (P_1), when
it was issued offline, and the history of Latarnia announcements. Pure: no I/O, the clock passed in.

* offline24 (the taxpayer's choice, or KSeF unreachable without an announcement): by the end of the next
  business day after P_1;
* offline (unavailability, Latarnia MAINTENANCE): by the end of the next business day after it ends;
* awaryjny (failure, Latarnia FAILURE): within 7 business days after it ends; a new failure announcement
  restarts the count, so the last failure's end counts;
* total failure (TOTAL_FAILURE): no obligation to send, so no deadline;
* a failure announced while an offline24 or offline invoice waits moves its deadline to 7 business days
  after the last failure ends.

"Business day": Monday to Friday, not a Polish public holiday (ksefd.clock, the `holidays` package: Easter
Monday, Corpus Christi, 1 and 3 May, 11 November, 24 December from 2025, ...), days in Warsaw time. While the
outage that sets the deadline has not ended, the deadline is not known yet (None, with the reason).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from ksefd.clock import add_business_days, end_of_day, next_business_day, warsaw_date
from ksefd.i18n import _
from ksefd.store import Announcement

OFFLINE24 = "offline24"
UNAVAILABILITY = "unavailability"
FAILURE = "failure"
TOTAL_FAILURE = "total-failure"
MODES = (OFFLINE24, UNAVAILABILITY, FAILURE, TOTAL_FAILURE)
FAILURE_DAYS = 7
# Latarnia's category -> the offline mode it opens (PROTOCOL.md §8.1; the mapping is PROTOCOL.md's [INFER]).
MODE_OF_CATEGORY = {"MAINTENANCE": UNAVAILABILITY, "FAILURE": FAILURE, "TOTAL_FAILURE": TOTAL_FAILURE}


@dataclass(frozen=True)
class Outage:
    """One announced event, read off its messages: `end` None while it lasts."""

    category: str
    event_id: int | None
    start: dt.datetime
    end: dt.datetime | None


@dataclass(frozen=True)
class Deadline:
    at: dt.datetime | None         # the first instant that is too late (end of the last allowed day, Warsaw)
    basis: str                     # offline24 | unavailability | failure | total-failure: which rule applies
    reason: str                    # for a person, in the config's language (the log names `basis`)


def outages(history: Iterable[Announcement]) -> list[Outage]:
    """Events from messages: FAILURE_START opens a failure, FAILURE_END (same eventId) ends it; a
    MAINTENANCE_ANNOUNCEMENT gives the planned window."""
    starts: dict[object, Outage] = {}
    ends: dict[object, dt.datetime] = {}
    for a in history:
        key: object = a.event_id if a.event_id is not None else a.message_id
        if a.type == "FAILURE_START" and a.start is not None:
            starts[key] = Outage(a.category or "FAILURE", a.event_id, a.start, a.end)
        elif a.type == "FAILURE_END":
            end = a.end or a.published or a.start
            if end is not None:
                ends[key] = end
            if key not in starts and a.start is not None:
                starts[key] = Outage(a.category or "FAILURE", a.event_id, a.start, end)
        elif a.type == "MAINTENANCE_ANNOUNCEMENT" and a.start is not None:
            starts[key] = Outage("MAINTENANCE", a.event_id, a.start, a.end)
    found = []
    for key, outage in starts.items():
        end = ends.get(key, outage.end if outage.category == "MAINTENANCE" else None)
        found.append(Outage(outage.category, outage.event_id, outage.start, end))
    return sorted(found, key=lambda o: o.start)


def _day(when: dt.datetime) -> str:
    return f"{warsaw_date(when):%Y-%m-%d}"


def _after_failures(failures: list[Outage], why: str) -> Deadline:
    if any(f.end is None for f in failures):
        return Deadline(None, FAILURE, _("{why}: 7 business days after the failure ends; it has not ended yet",
                                         why=why))
    last = max(f.end for f in failures if f.end is not None)
    day = add_business_days(warsaw_date(last), FAILURE_DAYS)
    return Deadline(end_of_day(day), FAILURE, _("{why}: 7 business days after the failure ended on {ended}, so by "
                                                "{day}", why=why, ended=_day(last), day=f"{day:%Y-%m-%d}"))


def deadline(mode: str, issue_date: dt.date, issued_at: dt.datetime, history: Iterable[Announcement],
             now: dt.datetime) -> Deadline:
    """The deadline of an invoice still waiting to be sent (call again when announcements change)."""
    events = [o for o in outages(history) if o.start <= now]
    if mode == TOTAL_FAILURE:
        return Deadline(None, TOTAL_FAILURE, _("total failure of KSeF: no obligation to send (PROTOCOL.md §8.1); "
                                               "ksefd sends it once KSeF is back"))
    # Failures going on when the invoice was issued, or announced since: they restart the count.
    failures = [o for o in events if o.category == "FAILURE" and (o.end is None or o.end > issued_at)]
    if mode == FAILURE:
        if not failures:
            failures = [o for o in events if o.category == "FAILURE" and o.start <= issued_at][-1:]
        if not failures:
            return Deadline(None, FAILURE, _("failure mode, but no FAILURE announcement is known yet"))
        return _after_failures(failures, _("failure (awaria) announced by KSeF"))
    if failures:
        return _after_failures(failures, _("{mode} invoice waiting when a KSeF failure was announced", mode=mode))
    if mode == UNAVAILABILITY:
        windows = [o for o in events if o.category == "MAINTENANCE" and o.start <= issued_at
                   and (o.end is None or o.end > issued_at)]
        if not windows:
            # Latarnia said MAINTENANCE but no announced window covers the moment of issue (missing, or its
            # start a little later): until one is known the stricter offline24 deadline applies, so the
            # invoice is never left without one (sending earlier than required is always allowed).
            day = next_business_day(issue_date)
            return Deadline(end_of_day(day), UNAVAILABILITY, _("KSeF unavailability without a known announced "
                                                               "window: by the next business day after the issue "
                                                               "date, {day}, until the window is known",
                                                               day=f"{day:%Y-%m-%d}"))
        if any(w.end is None for w in windows):
            return Deadline(None, UNAVAILABILITY, _("KSeF unavailability: the next business day after it ends; its "
                                                    "end is not known yet"))
        end = max(w.end for w in windows if w.end is not None)
        day = next_business_day(warsaw_date(end))
        return Deadline(end_of_day(day), UNAVAILABILITY, _("KSeF unavailability ending {ended}: by the next "
                                                           "business day, {day}", ended=_day(end),
                                                           day=f"{day:%Y-%m-%d}"))
    day = next_business_day(issue_date)
    return Deadline(end_of_day(day), OFFLINE24, _("offline24: by the next business day after the issue date "
                                                  "{issue_date} (P_1), {day}", issue_date=f"{issue_date:%Y-%m-%d}",
                                                  day=f"{day:%Y-%m-%d}"))


def elapsed_share(issued_at: dt.datetime, at: dt.datetime | None, now: dt.datetime) -> float | None:
    """How much of the time from issue to deadline is gone (0.0 .. 1.0+), None without a deadline."""
    if at is None:
        return None
    total = (at - issued_at).total_seconds()
    if total <= 0:
        return 1.0
    return max(0.0, (now - issued_at).total_seconds() / total)
