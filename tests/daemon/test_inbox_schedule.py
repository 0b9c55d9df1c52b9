"""The inbox pipeline's timing rules (issue #6 item 4, PROTOCOL.md §6.4 and §7): the hourly budget that
exports and metadata queries share, the nightly reconciliation time, the audit windows."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from ksefd.clock import WARSAW, ManualClock
from ksefd.daemon.failures import Backoff
from ksefd.daemon.inbox.reconcile import audit_windows
from ksefd.daemon.inbox.schedule import HourlyBudget, next_reconcile
from ksefd.store import Store

START = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


async def test_exports_and_metadata_queries_share_20_calls_per_sliding_hour(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with await Store.open(tmp_path / "state.sqlite3", clock) as store:
        budget = HourlyBudget("acme", store.kv, clock.now, clock.sleep)
        for i in range(20):
            await budget.spend("export" if i % 2 else "metadata")
            clock.advance(60)                                   # 20 calls within 20 minutes
        assert budget.used() == 20
        waiting = asyncio.ensure_future(budget.spend("export"))
        await asyncio.sleep(0.01)
        assert not waiting.done() and clock.sleepers == 1      # the 21st call waits...
        clock.advance(40 * 60 - 1)                              # ...until the first call is an hour old
        await asyncio.sleep(0.01)
        assert not waiting.done()
        clock.advance(3)
        await asyncio.wait_for(waiting, 1)
        assert budget.used() == 20
        # A restart within the hour remembers what was spent (kv namespace inbox_budget).
        again = HourlyBudget("acme", store.kv, clock.now, clock.sleep)
        await again.load()
        assert again.used() == 20 and again.wait_seconds() > 0
        # Budgets are per company (per NIP context, §7).
        other = HourlyBudget("other", store.kv, clock.now, clock.sleep)
        await other.load()
        assert other.wait_seconds() == 0


def test_the_reconciliation_runs_nightly_at_the_configured_polish_time() -> None:
    at = dt.time(2, 30)
    after = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    assert next_reconcile(after, at) == dt.datetime(2026, 11, 21, 2, 30, tzinfo=WARSAW)
    early = dt.datetime(2026, 11, 20, 0, 30, tzinfo=dt.UTC)          # 01:30 in Warsaw (CET)
    assert next_reconcile(early, at) == dt.datetime(2026, 11, 20, 2, 30, tzinfo=WARSAW)
    summer = dt.datetime(2026, 7, 1, 0, 15, tzinfo=dt.UTC)          # 02:15 in Warsaw (CEST)
    assert next_reconcile(summer, at) == dt.datetime(2026, 7, 1, 0, 30, tzinfo=dt.UTC)
    exactly = dt.datetime(2026, 11, 20, 2, 30, tzinfo=WARSAW)
    assert next_reconcile(exactly, at) == dt.datetime(2026, 11, 21, 2, 30, tzinfo=WARSAW)


def test_audit_windows_are_adjacent_and_at_most_100_days() -> None:
    end = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    windows = audit_windows(end, 365)
    assert windows[0][0] == end - dt.timedelta(days=365) and windows[-1][1] == end
    assert all(b - a <= dt.timedelta(days=100) for a, b in windows)
    assert all(windows[i][1] == windows[i + 1][0] for i in range(len(windows) - 1))
    assert audit_windows(end, 7) == [(end - dt.timedelta(days=7), end)]
    assert audit_windows(end, 7, not_before=end - dt.timedelta(days=2)) == [(end - dt.timedelta(days=2), end)]


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(60, 300)
    assert [backoff.next_delay() for _ in range(5)] == [60, 120, 240, 300, 300]
    backoff.reset()
    assert backoff.next_delay() == 60
