"""Property: the inbox checkpoint (PROTOCOL.md §6.4; ksefd.ksef.export_package.next_checkpoint, as
ksefd/daemon/inbox/sync.py uses it) never moves back and never skips an invoice, whatever KSeF's timing:
invoices committed late behind the high-water mark, packages truncated at any size, windows with an explicit
end (a backfill capped at 100 days) or open, and an HWM reported capped at the window's end or not (issue #15).

KSeF is modelled from the spec, not from the client: each invoice has a permanentStorageDate and becomes
visible when it is committed (at that date, or later: a late commit); the HWM is the latest instant up to
which everything is committed; an export returns the visible invoices with `from <= date <= min(to, HWM)`,
oldest first, at most `cap` of them, `isTruncated` with `lastPermanentStorageDate` when more matched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ksefd.ksef.export_package import next_checkpoint
from ksefd.ksef.receiving import format_instant, parse_instant

BASE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MS = dt.timedelta(milliseconds=1)


@dataclass(frozen=True)
class Stored:
    number: int
    at: dt.datetime            # permanentStorageDate
    committed: dt.datetime     # visible to queries and exports from then on


def hwm(invoices: list[Stored], now: dt.datetime) -> dt.datetime:
    """Everything stored at or before the HWM is committed (a late invoice holds it back)."""
    pending = [i.at for i in invoices if i.at <= now < i.committed]
    return min(now, min(pending) - MS) if pending else now


def export(invoices: list[Stored], date_from: str, date_to: str | None, now: dt.datetime, cap: int,
           cap_hwm_at_to: bool) -> tuple[dict[str, object], list[Stored]]:
    start = parse_instant(date_from)
    mark = hwm(invoices, now)
    end = min(mark, parse_instant(date_to)) if date_to else mark
    matched = sorted((i for i in invoices if i.committed <= now and start <= i.at <= end),
                     key=lambda i: (i.at, i.number))
    reported_hwm = min(mark, parse_instant(date_to)) if (date_to and cap_hwm_at_to) else mark
    package: dict[str, object] = {"isTruncated": len(matched) > cap,
                                  "permanentStorageHwmDate": format_instant(reported_hwm)}
    if len(matched) > cap:
        matched = matched[:cap]
        package["lastPermanentStorageDate"] = format_instant(matched[-1].at)
    return package, matched


invoice_times = st.lists(st.tuples(st.integers(1, 600_000), st.integers(0, 120_000)), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(times=invoice_times, cap=st.integers(2, 8), steps=st.lists(st.integers(1, 90_000), min_size=1, max_size=40),
       explicit_ends=st.lists(st.one_of(st.none(), st.integers(1, 300_000)), min_size=1, max_size=40),
       cap_hwm_at_to=st.booleans())
def test_the_checkpoint_never_moves_back_and_never_skips(times: list[tuple[int, int]], cap: int, steps: list[int],
                                                         explicit_ends: list[int | None],
                                                         cap_hwm_at_to: bool) -> None:
    # Invoices are stored after the first checkpoint (KSeF's HWM never goes back: one stored at the
    # checkpoint itself and committed later would mean an HWM before it).
    invoices = [Stored(n, BASE + at * MS, BASE + (at + delay) * MS) for n, (at, delay) in enumerate(times)]
    # More invoices at one instant than a package holds cannot be paged by date (sync.py refuses to loop).
    per_instant: dict[dt.datetime, int] = {}
    for i in invoices:
        per_instant[i.at] = per_instant.get(i.at, 0) + 1
    if any(count >= cap for count in per_instant.values()):
        return
    checkpoint = format_instant(BASE)
    exported: set[int] = set()
    now = BASE
    # Running: time passes between cycles, each cycle runs exports until its window is done.
    plan = [*steps, 10_000_000]                  # ...and finally long after everything was committed
    for index, step in enumerate(plan):
        now += step * MS
        last = index == len(plan) - 1
        explicit = None if last else explicit_ends[index % len(explicit_ends)]
        for _ in range(len(invoices) + 5):       # a cycle: truncated packages continue at once
            window_to = (format_instant(parse_instant(checkpoint) + explicit * MS)
                         if explicit is not None and parse_instant(checkpoint) + explicit * MS < now else None)
            package, got = export(invoices, checkpoint, window_to, now, cap, cap_hwm_at_to)
            exported.update(i.number for i in got)
            following = next_checkpoint(package, "PermanentStorage", window_to)
            assert parse_instant(following) >= parse_instant(checkpoint), "the checkpoint moved back"
            # Nothing before the new checkpoint may still be missing: it would never be exported again.
            skipped = [i for i in invoices if i.at < parse_instant(following) and i.number not in exported]
            assert not skipped, f"skipped {skipped} moving {checkpoint} -> {following}"
            checkpoint = following
            if not package["isTruncated"] and window_to is None:
                break
    assert exported == {i.number for i in invoices}
