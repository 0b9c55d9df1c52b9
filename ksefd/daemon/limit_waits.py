"""What KSeF's rate limits hold back right now, per company, for `ksefd status` (issue #16).

An invoice moves to SUBMITTING before its send asks the rate limiter for room (the intent is recorded first,
PROTOCOL.md §13), so while `invoiceSend`'s 30 a minute (§7) or a session's opening waits, `ksefd status`
would count it as "in KSeF" though it has not left. The daemon's heartbeat (every 10 s) carries what the
limiter holds back (`RateLimiter.held_back`), and the status says so: nothing is wrong, nothing to do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from ksefd.config import Company
from ksefd.i18n import N_, _, counted
from ksefd.ksef import ContextIdentifier, RateLimiter

from .status_text import relative

# The groups whose wait holds invoices already in SUBMITTING, and how an accountant calls each.
HOLDING_GROUPS = {
    "invoiceSend": N_("online sending: ksefd sends {invoices} of those counted as in KSeF once the limit lets it"),
    "onlineSession": N_("opening an online session"),
    "batchSession": N_("opening a batch session"),
}


def held_by_company(limiter: RateLimiter, companies: Iterable[Company]) -> dict[str, dict[str, Any]]:
    """{company: {group: {"count": n, "until": ISO time}}} for the heartbeat; companies with no wait left out."""
    held = limiter.held_back()
    if not held:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for company in companies:
        groups = held.get(ContextIdentifier.nip(company.nip).key, {})
        shown = {group: {"count": count, "until": dt.datetime.fromtimestamp(until, dt.UTC).isoformat()}
                 for group, (count, until) in groups.items() if group in HOLDING_GROUPS}
        if shown:
            found[company.name] = shown
    return found


def limit_wait_lines(held: dict[str, Any] | None, now: dt.datetime) -> list[str]:
    """One line per group still waiting at `now` (a heartbeat up to 10 s old may name a wait already over)."""
    lines = []
    for group, wait in (held or {}).items():
        until = dt.datetime.fromisoformat(wait["until"])
        if group in HOLDING_GROUPS and until > now:
            what = _(HOLDING_GROUPS[group], invoices=counted(wait["count"], "invoice"))
            lines.append(_("  waiting for KSeF's rate limit: {what}; ksefd goes on by itself {time}, nothing to do",
                           what=what, time=relative(until, now)))
    return lines
