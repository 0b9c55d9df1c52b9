"""When the inbox pipeline may call KSeF (issue #6 item 4; PROTOCOL.md §6.4 step 5, §7).

* `HourlyBudget`: exports and metadata queries of one company share one budget of 20 calls in any sliding
  hour per (NIP, IP) (§6.4: "the shared budget is 20 exports per hour per context and IP"). The client's
  rate limiter already keeps each KSeF group within its own limit; this budget keeps their sum within it,
  so a reconciliation never leaves the regular cycles without exports. Its timestamps are kept in the
  state database (kv namespace `inbox_budget`), so a restart within the hour does not spend it twice.
* `cycle_due`: at least `cycle_minutes` (15 by default) between cycles of one subject type.
* `next_reconcile`: the nightly audit at `reconcile_at`, Polish time.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable

import structlog

from ksefd.clock import WARSAW
from ksefd.store import KeyValueRepo

log = structlog.get_logger("ksefd.daemon.inbox")

BUDGET_NAMESPACE = "inbox_budget"
HOUR = 3600.0
MARGIN = 1.0                 # KSeF stamps a call when it arrives; stay a second clear of its window
SHARED_HOURLY_CALLS = 20     # PROTOCOL.md §6.4, §7: invoiceExport and invoiceMetadata are 20/h each


class HourlyBudget:
    """At most `per_hour` calls (exports + metadata pages) in any sliding hour; None: no budget."""

    def __init__(self, company: str, kv: KeyValueRepo, now: Callable[[], dt.datetime],
                 sleep: Callable[[float], Awaitable[None]], per_hour: int | None = SHARED_HOURLY_CALLS) -> None:
        if per_hour is not None and per_hour < 1:
            raise ValueError(f"per_hour must be at least 1 (or None for no budget), not {per_hour}")
        self.company = company
        self.kv = kv
        self.now = now
        self.sleep = sleep
        self.per_hour = per_hour
        self._stamps: list[float] = []
        self._loaded = False

    async def load(self) -> None:
        text = await self.kv.get(BUDGET_NAMESPACE, self.company)
        self._stamps = sorted(float(t) for t in json.loads(text)) if text else []
        self._loaded = True

    def _prune(self, now: float) -> None:
        self._stamps = [t for t in self._stamps if t > now - HOUR - MARGIN]

    def wait_seconds(self) -> float:
        """How long a call made now would have to wait (0: at once)."""
        if self.per_hour is None:
            return 0.0
        now = self.now().timestamp()
        self._prune(now)
        if len(self._stamps) < self.per_hour:
            return 0.0
        oldest_that_must_leave = self._stamps[len(self._stamps) - self.per_hour]
        return max(0.0, oldest_that_must_leave + HOUR + MARGIN - now)

    def used(self) -> int:
        self._prune(self.now().timestamp())
        return len(self._stamps)

    async def spend(self, what: str) -> None:
        """Wait until one more call fits, then count it (persisted before the call is made)."""
        if not self._loaded:
            await self.load()
        while (wait := self.wait_seconds()) > 0:
            log.info("inbox.budget_wait", company=self.company, call=what, seconds=round(wait, 1),
                     used=len(self._stamps), per_hour=self.per_hour)
            await self.sleep(wait)
        self._stamps.append(self.now().timestamp())
        await self.kv.put(BUDGET_NAMESPACE, self.company, json.dumps(self._stamps))


def cycle_due(last_cycle_at: dt.datetime | None, cycle_minutes: float) -> dt.datetime | None:
    """When the next cycle of a subject type may start (None: now, it never ran)."""
    return None if last_cycle_at is None else last_cycle_at + dt.timedelta(minutes=cycle_minutes)


def next_reconcile(after: dt.datetime, at: dt.time) -> dt.datetime:
    """The first `at` (Europe/Warsaw wall time) strictly after `after`, in UTC."""
    local = after.astimezone(WARSAW)
    candidate = dt.datetime.combine(local.date(), at, tzinfo=WARSAW)
    if candidate <= local:
        candidate = dt.datetime.combine(local.date() + dt.timedelta(days=1), at, tzinfo=WARSAW)
    return candidate.astimezone(dt.UTC)
