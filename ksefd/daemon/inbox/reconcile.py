"""Reconciliation (issue #6 item 5): a periodic audit that re-queries a past window for its metadata and
reports every invoice KSeF has that the inbox lacks, then fetches it.

Why: the checkpoint only moves forward (PROTOCOL.md §6.4), so an invoice that KSeF commits late, with a
permanentStorageDate behind a high-water mark it had already reported, is never in a later window. Users
of other tools report exactly that. The audit looks back `reconcile_window_days` (7 by default) up to the
checkpoint, in windows of at most 100 days (§14.4), and compares KSeF's list with what was delivered
(the store, not the folder: the ERP may have moved the files away).

Reported three ways: the log event `inbox.reconcile_missing` (with the KSeF numbers), the company's inbox
status (`inbox_status`), and the counter `reconcile_missing`. Fetched by single downloads when few are
missing (§6.2), otherwise by an export of the window that holds them (deduplicated on delivery).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import structlog

from ksefd.ksef import MAX_WINDOW, format_instant, parse_instant, query_filters

from .delivery import DeliveryReport
from .sync import Pipeline, export_metadata, export_package, fetch_singles

log = structlog.get_logger("ksefd.daemon.inbox")

REPORTED_NUMBERS = 200       # KSeF numbers listed in the log and the status (all are counted)


@dataclass
class ReconcileReport:
    subject_type: str
    window_from: str | None = None
    window_to: str | None = None
    checked: int = 0                                        # invoices KSeF listed in the window
    missing: list[str] = field(default_factory=list)        # ...that had never been delivered
    fetched: list[str] = field(default_factory=list)        # ...and were delivered by this audit

    def as_dict(self) -> dict[str, Any]:
        return {"subjectType": self.subject_type, "from": self.window_from, "to": self.window_to,
                "checked": self.checked, "missingCount": len(self.missing),
                "missing": self.missing[:REPORTED_NUMBERS], "fetched": len(self.fetched)}


def audit_windows(end: dt.datetime, days: int, not_before: dt.datetime | None = None
                  ) -> list[tuple[dt.datetime, dt.datetime]]:
    """[from, to] windows of at most 100 days (§14.4) covering `days` days up to `end`."""
    start = end - dt.timedelta(days=days)
    if not_before is not None:
        start = max(start, not_before)
    windows = []
    while start < end:
        stop = min(end, start + MAX_WINDOW)
        windows.append((start, stop))
        start = stop
    return windows


async def reconcile(p: Pipeline, subject_type: str, *, window_days: int,
                    not_before: dt.datetime | None = None) -> ReconcileReport:
    """Audit `window_days` before the checkpoint of `subject_type`; returns what was missing and fetched."""
    report = ReconcileReport(subject_type)
    checkpoint = await p.store.inbox.checkpoint(p.company, subject_type)
    if checkpoint is None or checkpoint.next_from is None:
        return report
    windows = audit_windows(checkpoint.next_from, window_days, not_before)
    if windows:
        report.window_from, report.window_to = format_instant(windows[0][0]), format_instant(windows[-1][1])
    for start, stop in windows:
        await _audit_window(p, subject_type, start, stop, report)
    p.metrics.reconcile_runs += 1
    p.metrics.reconcile_missing += len(report.missing)
    await p.store.inbox.mark_reconciled(p.company, subject_type, p.clock.now())
    await p.store.events.add(at=p.clock.now(), kind="inbox_reconcile", company=p.company, detail=report.as_dict())
    log.info("inbox.reconciled", company=p.company, subject=subject_type, checked=report.checked,
             missing=len(report.missing), fetched=len(report.fetched))
    return report


async def _listed(p: Pipeline, subject_type: str, start: dt.datetime, stop: dt.datetime) -> list[dict[str, Any]]:
    """Every invoice KSeF lists in [start, stop], package by package (deduplicated by KSeF number)."""
    listed: dict[str, dict[str, Any]] = {}
    date_from = format_instant(start)
    while True:
        filters = query_filters(subject_type, date_from, stop, now=p.clock.now())
        metadata, next_from, more = await export_metadata(p, subject_type, filters)
        listed.update((str(m["ksefNumber"]), m) for m in metadata)
        if not more or parse_instant(next_from) >= stop:
            return list(listed.values())
        date_from = next_from


async def _audit_window(p: Pipeline, subject_type: str, start: dt.datetime, stop: dt.datetime,
                        report: ReconcileReport) -> None:
    listed = await _listed(p, subject_type, start, stop)
    report.checked += len(listed)
    delivered = await p.store.inbox.delivered_among(p.company, [str(m["ksefNumber"]) for m in listed])
    missing = [m for m in listed if str(m["ksefNumber"]) not in delivered]
    if not missing:
        return
    numbers = [str(m["ksefNumber"]) for m in missing]
    report.missing += numbers
    log.warning("inbox.reconcile_missing", company=p.company, subject=subject_type, count=len(numbers),
                ksef_numbers=numbers[:REPORTED_NUMBERS], window_from=format_instant(start),
                window_to=format_instant(stop))
    fetched = await _fetch(p, subject_type, missing, stop)
    report.fetched += [n for n in fetched.delivered if n in set(numbers)]


async def _fetch(p: Pipeline, subject_type: str, missing: list[dict[str, Any]], stop: dt.datetime
                 ) -> DeliveryReport:
    if len(missing) <= p.small_gap:
        return await fetch_singles(p, subject_type, missing)
    # Many: export from the earliest missing invoice to the end of the audited window, package by package.
    earliest = min(parse_instant(str(m["permanentStorageDate"])) for m in missing)
    report = DeliveryReport()
    date_from = format_instant(earliest)
    while True:
        filters = query_filters(subject_type, date_from, stop, now=p.clock.now())
        result = await export_package(p, subject_type, filters)
        report.add(result.report)
        if not result.more or result.caught_up or parse_instant(result.next_from) >= stop:
            return report
        date_from = result.next_from
