"""KSeF -> inbox for one company (issue #6): complete, incremental, deduplicated.

    worker = InboxWorker(company, ksef_context, store, clock)
    await worker.run_forever(stop)          # the service runs one per company with receive = true
    report = await worker.run_cycle()       # or one cycle (tests, `--once`)

Per subject type (Subject2 by default; `receiving.subject_types`), one checkpoint in SQLite (PROTOCOL.md
§6.4): exports with dateType PermanentStorage, `restrictToPermanentStorageHwmDate` and adjacent windows,
each starting exactly where the last one ended (`lastPermanentStorageDate` after a truncated package,
otherwise the HWM). On the first run the window starts at `receiving.backfill_from` (00:00 Polish time;
"now": at the first run, no history; by default the first day of the previous month, so a new user gets
the purchases of the VAT period still being booked, issue #10 point 5); that start is logged
(`inbox.first_window`) and kept for `ksefd status` ("receiving since"), and backfill windows are cut at
100 days (§14.4). The
checkpoint moves only after every file of the package is delivered; a crash, a failed write or a
failed download leaves it where it was and the next attempt exports the same window again, which the
delivered set deduplicates.

Scheduling (item 4): at least `cycle_minutes` between cycles of a subject type; a backlog (truncated
packages) continues at once, one package per subject type in turn, within the company's shared hourly
budget (inbox_schedule.HourlyBudget). A 429 with a long Retry-After is waited out (nothing is sent to
KSeF before it has passed); other failures back off exponentially, credential and permission problems
slowly. The nightly reconciliation (reconcile.py) runs at `reconcile_at`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ksefd import clock as clocks
from ksefd.config import Company
from ksefd.ksef import (
    ZIP,
    AuthenticationFailed,
    ExportOptions,
    KsefContext,
    KsefException,
    RateLimited,
    format_instant,
    parse_instant,
    query_filters,
)
from ksefd.store import Store

from ..failures import Backoff, Failure, LastingFailure, classify
from ..runtime import sleep_unless_stopped
from .delivery import InboxFolder
from .hooks import InvoiceHooks
from .reconcile import ReconcileReport, reconcile
from .schedule import SHARED_HOURLY_CALLS, HourlyBudget, cycle_due, next_reconcile
from .status import StatusBook, note_receiving_since
from .sync import SMALL_GAP, InboxMetrics, Pipeline, export_package

log = structlog.get_logger("ksefd.daemon.inbox")

SUBJECT_NOT_ALLOWED = 21181       # the subject type is not allowed for this context type (§6.3)


def first_day_of_previous_month(now: dt.datetime) -> dt.date:
    """The default start of receiving: day 1 of the month before `now`'s month in Poland."""
    today = now.astimezone(clocks.WARSAW).date()
    last_of_previous = today.replace(day=1) - dt.timedelta(days=1)
    return last_of_previous.replace(day=1)


class _Stopped(Exception):
    """The stop event was set while waiting."""


@dataclass
class CycleReport:
    delivered: list[str] = field(default_factory=list)     # KSeF numbers, unless run_cycle(numbers=False)
    delivered_count: int = 0
    packages: int = 0
    failures: dict[str, str] = field(default_factory=dict)          # subject type -> error
    reconciled: list[ReconcileReport] = field(default_factory=list)


@dataclass
class _Subject:
    name: str
    backoff: Backoff
    retry_at: dt.datetime | None = None
    reconcile_retry_at: dt.datetime | None = None      # after a failed audit


class InboxWorker:
    def __init__(self, company: Company, context: KsefContext, store: Store, clock: clocks.Clock, *,
                 workdir: Path | None = None, export_options: ExportOptions | None = None,
                 hourly_budget: int | None = SHARED_HOURLY_CALLS, compression: str = ZIP,
                 small_gap: int = SMALL_GAP, retry_min_seconds: float | None = None,
                 retry_max_seconds: float | None = None, folder: InboxFolder | None = None,
                 on_login_failure: Callable[[Failure], Awaitable[None]] | None = None) -> None:
        self.company = company
        self.options = company.receiving
        # A failure of the login itself is the company's, not this half's: the connection holds the company
        # (connection.py), so the hold is kept in one place and shown once (issue #9).
        self._on_login_failure = on_login_failure
        self.store = store
        self.clock = clock
        self._stop: asyncio.Event | None = None
        hooks = InvoiceHooks(company.name, self.options, store, clock.now)
        budget = HourlyBudget(company.name, store.kv, clock.now, self._sleep, hourly_budget)
        self.pipeline = Pipeline(
            company=company.name, store=store, clock=clock, exporter=context.exporter(export_options),
            receiver=context.receiver(), budget=budget,
            folder=folder or InboxFolder(company.folders.inbox, self.options.inbox_layout),
            hooks=hooks, workdir=workdir or store.path.parent / "inbox-work" / company.name,
            compression=compression, small_gap=small_gap)
        first = retry_min_seconds or company.sending.retry_min_seconds
        cap = retry_max_seconds or company.sending.retry_max_seconds
        self.subjects: dict[str, _Subject] = {
            name: _Subject(name, Backoff(first, cap)) for name in self.options.subject_types}
        self.status = StatusBook(company.name, store.kv, clock.now)
        self._anchor = clock.now()          # the first reconciliation is the first `reconcile_at` after start
        self._started = False
        self._list_numbers = True
        self._crashing = LastingFailure(log.bind(company=company.name), "inbox.cycle_crashed")

    @property
    def metrics(self) -> InboxMetrics:
        return self.pipeline.metrics

    # -- lifecycle -------------------------------------------------------------------------------

    async def startup(self) -> None:
        """After a crash: place what was staged, remove temps that were not, run hooks left pending."""
        if self._started:
            return
        await self.pipeline.recover()
        removed = await asyncio.to_thread(self.pipeline.folder.prepare)
        if removed:
            log.info("inbox.stale_temps_removed", company=self.company.name, count=removed)
        await self.pipeline.budget.load()
        await self.pipeline.hooks.recover()
        self._started = True

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Cycles until `stop` is set; never raises for a KSeF or disk failure (they are retried)."""
        self._stop = stop
        try:
            await self.startup()
            while not stop.is_set():
                try:
                    await self.run_cycle(numbers=False)
                    self._crashing.cleared()
                except _Stopped:
                    break
                except Exception as error:            # a bug must not end receiving for this company
                    self._crashing.failed(error=repr(error), where=traceback.format_exc(limit=-3))
                    await self._sleep_quietly(self.company.sending.retry_min_seconds)
                    continue
                await self._sleep_quietly(await self.seconds_until_due())
        finally:
            self._stop = None

    async def run_cycle(self, *, force: bool = False, numbers: bool = True) -> CycleReport:
        """Every due subject type until caught up (one package per subject type in turn), then the
        reconciliation if it is due. `force` ignores the cadence (not a pending 429 or backoff).
        `numbers=False`: the report counts the delivered invoices without listing them (a backfill of
        50 000 would otherwise keep every KSeF number in memory until the cycle ends)."""
        await self.startup()
        report = CycleReport()
        self._list_numbers = numbers
        now = self.clock.now()
        started = {s.name: now for s in self.subjects.values() if await self._due(s, now, force)}
        pending = list(started)
        try:
            while pending:
                for name in list(pending):
                    more = await self._step(self.subjects[name], report)
                    if not more:
                        pending.remove(name)
                        if name not in report.failures:     # a failed one is retried after its backoff
                            await self.store.inbox.mark_cycle(self.company.name, name, started[name])
                if self._stop is not None and self._stop.is_set():
                    break
            for name in self.subjects:
                if name in report.failures or not self._reconcile_due(name, await self._last_reconcile(name)):
                    continue
                result = await self._reconcile_safely(name)
                if result is not None:
                    report.reconciled.append(result)
        finally:
            await self._save_status()
        return report

    # -- one package of one subject type ---------------------------------------------------------

    async def _step(self, subject: _Subject, report: CycleReport) -> bool:
        """Export and deliver one package; True when more is waiting at once."""
        try:
            date_from = await self._window_start(subject.name)
            filters = query_filters(subject.name, date_from, None, now=self.clock.now())
            result = await export_package(self.pipeline, subject.name, filters, prestart=True)
            if not result.caught_up:
                await self.store.inbox.advance(self.company.name, subject.name, parse_instant(result.next_from))
        except _Stopped:
            raise
        except Exception as error:
            report.failures[subject.name] = self._failed(subject, error)
            failure = classify(error)
            if failure.about_credentials and self._on_login_failure is not None:
                await self._on_login_failure(failure)
            return False
        report.packages += 0 if result.caught_up else 1
        report.delivered_count += len(result.report.delivered)
        if self._list_numbers:
            report.delivered += result.report.delivered
        subject.backoff.reset()
        subject.retry_at = None
        self.status.clear_error(subject.name)
        return result.more

    async def _window_start(self, subject_type: str) -> str:
        checkpoint = await self.store.inbox.checkpoint(self.company.name, subject_type)
        if checkpoint is not None and checkpoint.next_from is not None:
            return format_instant(checkpoint.next_from)
        start = self._initial_start()
        # Persisted before the first export: a restart must not move the start to its own "now".
        await self.store.inbox.advance(self.company.name, subject_type, start)
        await note_receiving_since(self.store.kv, self.company.name, subject_type, start)
        log.info("inbox.first_window", company=self.company.name, subject=subject_type, start=format_instant(start),
                 end="now, then continuously", backfill_from=str(self.options.backfill_from or "default"),
                 start_local=start.astimezone(clocks.WARSAW).isoformat())
        return format_instant(start)

    def _initial_start(self) -> dt.datetime:
        chosen = self.options.backfill_from
        if chosen == "now":
            return self.clock.now()
        day = chosen if isinstance(chosen, dt.date) else first_day_of_previous_month(self.clock.now())
        midnight = dt.datetime.combine(day, dt.time(0), tzinfo=clocks.WARSAW)
        return midnight.astimezone(dt.UTC)

    # -- failures --------------------------------------------------------------------------------

    def _failed(self, subject: _Subject, error: Exception) -> str:
        """Decide when to try again; never sooner than KSeF's Retry-After. Returns the message."""
        now = self.clock.now()
        self.metrics.failures += 1
        kind, delay = self._classify(subject, error)
        subject.retry_at = now + dt.timedelta(seconds=delay)
        message = f"{type(error).__name__}: {error}"
        first = self.status.set_error(subject.name, kind, message, subject.retry_at)
        level = log.warning if first else log.info
        level("inbox.cycle_failed", company=self.company.name, subject=subject.name, kind=kind, error=message,
              retry_in=round(delay, 1))
        return message

    def _classify(self, subject: _Subject, error: Exception) -> tuple[str, float]:
        """The daemon's one classification (failures.py), in the words the inbox status uses."""
        failure = classify(error)
        if isinstance(error, RateLimited):
            self.metrics.rate_limited += 1
            return "rate-limited", max(failure.retry_after, 1.0)
        if failure.verdict == "hold" or isinstance(error, AuthenticationFailed) or (
                isinstance(error, KsefException) and SUBJECT_NOT_ALLOWED in error.codes):
            return "needs-attention", self.company.sending.hold_retry_seconds
        if failure.code == "os-error":
            return "disk", subject.backoff.next_delay()
        if failure.code == "unexpected":
            return "unexpected", subject.backoff.next_delay()
        return "ksef", subject.backoff.next_delay()

    # -- reconciliation --------------------------------------------------------------------------

    async def _last_reconcile(self, subject_type: str) -> dt.datetime | None:
        checkpoint = await self.store.inbox.checkpoint(self.company.name, subject_type)
        return checkpoint.last_reconcile_at if checkpoint else None

    def _next_reconcile(self, subject_type: str, last: dt.datetime | None) -> dt.datetime:
        due = next_reconcile(last or self._anchor, self.options.reconcile_at)
        retry = self.subjects[subject_type].reconcile_retry_at
        return max(due, retry) if retry is not None else due

    def _reconcile_due(self, subject_type: str, last: dt.datetime | None) -> bool:
        return self.options.reconcile and self.clock.now() >= self._next_reconcile(subject_type, last)

    async def reconcile(self, subject_type: str) -> ReconcileReport:
        """Run the audit of `subject_type` now (reconcile.py)."""
        await self.startup()
        result = await reconcile(self.pipeline, subject_type, window_days=self.options.reconcile_window_days)
        if subject_type in self.subjects:
            self.subjects[subject_type].reconcile_retry_at = None
        self.status.set_reconcile(subject_type, result.as_dict())
        await self._save_status()
        return result

    async def _reconcile_safely(self, subject_type: str) -> ReconcileReport | None:
        try:
            return await self.reconcile(subject_type)
        except _Stopped:
            raise
        except Exception as error:
            # Its time was not marked: retried after a backoff, not in a tight loop.
            self.metrics.failures += 1
            subject = self.subjects[subject_type]
            retry = error.retry_after if isinstance(error, RateLimited) else subject.backoff.next_delay()
            subject.reconcile_retry_at = self.clock.now() + dt.timedelta(seconds=retry)
            log.warning("inbox.reconcile_failed", company=self.company.name, subject=subject_type,
                        error=f"{type(error).__name__}: {error}", retry_in=round(retry, 1))
            return None

    # -- time ------------------------------------------------------------------------------------

    async def _due(self, subject: _Subject, now: dt.datetime, force: bool) -> bool:
        if subject.retry_at is not None and now < subject.retry_at:
            return False
        if force:
            return True
        checkpoint = await self.store.inbox.checkpoint(self.company.name, subject.name)
        due = cycle_due(checkpoint.last_cycle_at if checkpoint else None, self.options.cycle_minutes)
        return due is None or now >= due

    async def seconds_until_due(self) -> float:
        """Seconds until a subject type or the reconciliation is due (run_forever sleeps this long)."""
        now = self.clock.now()
        moments: list[dt.datetime] = []
        for subject in self.subjects.values():
            checkpoint = await self.store.inbox.checkpoint(self.company.name, subject.name)
            due = cycle_due(checkpoint.last_cycle_at if checkpoint else None, self.options.cycle_minutes) or now
            if subject.retry_at is not None:
                due = max(due, subject.retry_at)
            moments.append(due)
            if self.options.reconcile:
                moments.append(self._next_reconcile(subject.name, checkpoint.last_reconcile_at if checkpoint else None))
        return max(0.0, (min(moments) - now).total_seconds()) if moments else 60.0

    async def _save_status(self) -> None:
        checkpoints = await self.store.inbox.checkpoints(self.company.name)
        await self.status.save(self.metrics, checkpoints, await self.store.inbox.delivered_count(self.company.name))

    async def _sleep(self, seconds: float) -> None:
        """The clock's sleep, cut short by the stop event (then _Stopped)."""
        stop = self._stop
        if stop is None:
            await self.clock.sleep(seconds)
            return
        if stop.is_set() or await sleep_unless_stopped(self.clock, stop, seconds):
            raise _Stopped

    async def _sleep_quietly(self, seconds: float) -> None:
        with contextlib.suppress(_Stopped):
            await self._sleep(seconds)
