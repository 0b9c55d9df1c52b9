"""The one-line summary systemd shows as "Status:" (`systemctl status ksefd`), from `ksefd status`'s data."""

from __future__ import annotations

from .status import DaemonStatus


def one_line(status: DaemonStatus) -> str:
    """e.g. "3 companies: 12 queued, 2 in KSeF, 40 accepted and 1 rejected today; on hold: acme" (<= 200 chars)."""
    companies = status.companies
    queued = sum(c.queued for c in companies)
    in_ksef = sum(c.in_ksef for c in companies)
    accepted = sum(c.accepted_today for c in companies)
    rejected = sum(c.rejected_today for c in companies)
    held = [c.name for c in companies if c.on_hold]
    text = (f"{len(companies)} compan{'y' if len(companies) == 1 else 'ies'}: {queued} queued, {in_ksef} in KSeF, "
            f"{accepted} accepted and {rejected} rejected today")
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        text += f"; on hold: {shown}"
    return text[:200]
