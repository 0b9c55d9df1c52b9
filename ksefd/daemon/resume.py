"""`ksefd resume -c CONFIG COMPANY` (issue #10 point 2): a person fixed what put a company on hold and
wants it tried now, not at the next `hold_retry_seconds`.

The command and the daemon meet in the state database, which both already open (no socket, no signal,
works the same under systemd and as a Windows service): the command writes a request (kv namespace
`resume`, key = the company's name); the running daemon's connection of that company takes it at its
next look (connection.py, every few seconds while on hold), deletes it and logs in again with freshly
read credential files. The hold clears as soon as that login succeeds. The command then waits a little
for the outcome and says what happened. With no daemon running the request waits for the next start,
which re-examines every hold at once anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from ksefd.clock import Clock
from ksefd.store import Store

RESUME_NAMESPACE = "resume"
HEARTBEAT_FRESH = dt.timedelta(seconds=30)


async def take_resume_request(store: Store, company: str) -> bool:
    """True (once) if `ksefd resume` asked for this company since the last look."""
    return await store.kv.delete(RESUME_NAMESPACE, company)


@dataclass
class ResumeOutcome:
    exit_code: int
    message: str


async def request_resume(store: Store, company: str, clock: Clock, *, wait_seconds: float = 15.0,
                         poll_seconds: float = 0.2) -> ResumeOutcome:
    hold = await store.holds.get(company)
    if hold is None:
        return ResumeOutcome(0, f"company {company!r} is not on hold; nothing to resume")
    await store.kv.put(RESUME_NAMESPACE, company, clock.now().isoformat())
    beat = next((b for b in await store.heartbeat.read() if b.component == "daemon"), None)
    running = beat is not None and clock.now() - beat.at < HEARTBEAT_FRESH and not (
        isinstance(beat.detail, dict) and beat.detail.get("stopped"))
    if not running:
        return ResumeOutcome(0, f"company {company!r} is on hold ({hold.code}: {hold.reason}). No daemon is "
                                f"running: the hold is re-examined as soon as `ksefd run` starts.")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:       # real time: waiting for another process
        await asyncio.sleep(poll_seconds)
        if await store.kv.get(RESUME_NAMESPACE, company) is not None:
            continue                          # not taken yet
        now_hold = await store.holds.get(company)
        if now_hold is None:
            return ResumeOutcome(0, f"company {company!r} resumed: the login succeeded and the hold is cleared")
        if now_hold.updated_at > hold.updated_at:
            return ResumeOutcome(1, f"company {company!r} is still on hold: {now_hold.reason} "
                                    f"({now_hold.code}). Fix that, then run `ksefd resume` again.")
    return ResumeOutcome(0, f"the request to resume {company!r} was left for the running daemon (pid "
                            f"{beat.pid if beat else '?'}); see `ksefd status` in a moment")
