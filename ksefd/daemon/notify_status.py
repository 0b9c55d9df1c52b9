"""The one-line summary systemd shows as "Status:" (`systemctl status ksefd`), from `ksefd status`'s data."""

from __future__ import annotations

from ksefd.clock import Clock
from ksefd.config import Config
from ksefd.store import IN_KSEF_STATES, InvoiceState, Store
from ksefd.store.db import db_time

from .status import FINISHING, WAITING, DaemonStatus, start_of_today


def one_line(status: DaemonStatus) -> str:
    """e.g. "3 companies: 12 queued, 2 in KSeF, 40 accepted and 1 rejected today; on hold: acme" (<= 200 chars)."""
    companies = status.companies
    return _text(len(companies), sum(c.queued for c in companies), sum(c.in_ksef for c in companies),
                 sum(c.accepted_today for c in companies), sum(c.rejected_today for c in companies),
                 [c.name for c in companies if c.on_hold])


def _text(count: int, queued: int, in_ksef: int, accepted: int, rejected: int, held: list[str]) -> str:
    text = (f"{count} compan{'y' if count == 1 else 'ies'}: {queued} queued, {in_ksef} in KSeF, "
            f"{accepted} accepted and {rejected} rejected today")
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        text += f"; on hold: {shown}"
    return text[:200]


async def summary(store: Store, config: Config, clock: Clock) -> str:
    """`one_line(await gather(...))`'s text from a few queries over all companies at once (issue #16 point 4):
    `gather` asks about eight per company, ~200 ms of CPU for 100 companies, each time systemd gets a STATUS."""
    names = [c.name for c in config.companies]
    since = db_time(start_of_today(clock))
    queued = in_ksef = accepted = rejected = 0
    for start in range(0, len(names), 500):          # SQLite < 3.32 allows 999 parameters in a statement
        chunk = names[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for state, count in await store.db.fetch_all(
                f"SELECT state, COUNT(*) FROM invoices WHERE company IN ({marks}) GROUP BY state", tuple(chunk)):
            if InvoiceState(state) in WAITING:
                queued += count
            elif InvoiceState(state) in (*IN_KSEF_STATES, *FINISHING):
                in_ksef += count
        for to_state, count in await store.db.fetch_all(
                f"SELECT to_state, COUNT(*) FROM events WHERE company IN ({marks}) AND to_state IN (?, ?) AND at >= ? "
                "GROUP BY to_state", (*chunk, InvoiceState.ACCEPTED.value, InvoiceState.REJECTED.value, since)):
            if to_state == InvoiceState.ACCEPTED.value:
                accepted += count
            else:
                rejected += count
    holds = {hold.company for hold in await store.holds.all()}
    return _text(len(names), queued, in_ksef, accepted, rejected, [n for n in names if n in holds])
