"""`ksefd status` (issue #5 item 7): per company, what waits, what is in KSeF, what was accepted today,
what was rejected, whether it is on hold and why, the oldest waiting invoice and the last error. Read from
the state database, which a running daemon keeps up to date (WAL: reading never blocks it).

`gather(store, config, clock)` is also what `ksefd demo` polls for its live summary.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ksefd.clock import WARSAW, Clock
from ksefd.config import Config
from ksefd.store import IN_KSEF_STATES, InvoiceState, Store

from .certificate_renewal import renewal_lines
from .inbox.status import read_inbox_status, receiving_since
from .inbox.status import render_lines as render_inbox_lines

S = InvoiceState
WAITING = (S.CLAIMED, S.CHECKED, S.QUEUED, S.DEFERRED, S.HELD, S.OFFLINE)
FINISHING = (S.ACCEPTED, S.UPO_SAVED)
HEARTBEAT_STALE = dt.timedelta(seconds=30)


@dataclass
class CompanyStatus:
    name: str
    nip: str
    send: bool
    receive: bool
    queued: int
    in_ksef: int
    accepted_today: int
    accepted_total: int
    rejected_today: int
    rejected_total: int
    on_hold: dict[str, Any] | None
    oldest_waiting: dict[str, Any] | None
    last_error: dict[str, Any] | None
    inbox: dict[str, Any] | None = None          # issue #6: the receiving pipeline's status (inbox_status.py)
    offline: dict[str, Any] | None = None        # issue #11: offline invoices waiting, deadlines, KSeF availability
    receiving_since: str | None = None           # where the first receiving window started (issue #10 point 5)
    returned: int = 0                            # files given back to outbox/ when sending was switched off
    redrops: int = 0                             # re-drops of accepted invoices answered from the original


@dataclass
class DaemonStatus:
    running: bool
    last_heartbeat: str | None
    pid: int | None
    companies: list[CompanyStatus]
    certificates: list[str] = field(default_factory=list)     # renewals of KSeF certificates (issue #13)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start_of_today(clock: Clock) -> dt.datetime:
    local = clock.now().astimezone(WARSAW)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=WARSAW).astimezone(dt.UTC)


async def gather(store: Store, config: Config, clock: Clock) -> DaemonStatus:
    today = start_of_today(clock)
    companies = [await _company(store, c.name, c.nip, c.send, c.receive, today) for c in config.companies]
    beat = next((b for b in await store.heartbeat.read() if b.component == "daemon"), None)
    running = beat is not None and clock.now() - beat.at < HEARTBEAT_STALE and not (
        isinstance(beat.detail, dict) and beat.detail.get("stopped"))
    return DaemonStatus(running, beat.at.isoformat() if beat else None, beat.pid if beat else None, companies,
                        await renewal_lines(store, clock.now()))


async def _company(store: Store, name: str, nip: str, send: bool, receive: bool, today: dt.datetime
                   ) -> CompanyStatus:
    counts = await store.invoices.counts(name)
    hold = await store.holds.get(name)
    oldest = await store.invoices.oldest_waiting(name)
    rejected_today = await store.events.count_reached(name, S.REJECTED, today)
    return CompanyStatus(
        name=name, nip=nip, send=send, receive=receive,
        queued=sum(counts.get(s, 0) for s in WAITING),
        in_ksef=sum(counts.get(s, 0) for s in (*IN_KSEF_STATES, *FINISHING)),
        accepted_today=await store.events.count_reached(name, S.ACCEPTED, today),
        accepted_total=sum(counts.get(s, 0) for s in (S.ACCEPTED, S.UPO_SAVED, S.DONE)),
        rejected_today=rejected_today, rejected_total=counts.get(S.REJECTED, 0),
        on_hold=None if hold is None else {
            "code": hold.code, "reason": hold.reason, "since": hold.since.isoformat(),
            "nextRetryAt": hold.next_retry_at.isoformat() if hold.next_retry_at else None},
        oldest_waiting=None if oldest is None else {
            "file": oldest.file_name, "state": str(oldest.state), "since": oldest.created_at.isoformat()},
        last_error=await _last_error(store, name),
        inbox=await read_inbox_status(store, name) if receive else None,
        receiving_since=await receiving_since(store, name) if receive else None,
        returned=counts.get(S.RETURNED, 0), redrops=counts.get(S.REDROP, 0),
        offline=await _offline(store, name) if send else None)


async def _offline(store: Store, company: str) -> dict[str, Any]:
    """Offline invoices not yet in KSeF with their deadlines (PROTOCOL.md §8.1), and KSeF's availability."""
    waiting = await store.offline.waiting(company)
    rows = {r.id: r for r in await store.invoices.get_many([w.invoice_id for w in waiting[:50]])}
    shown = await store.kv.get("availability", company)
    deadlines = [w.deadline for w in waiting if w.deadline is not None]
    return {
        "availability": json.loads(shown) if shown else None,
        "waiting": len(waiting),
        "nextDeadline": min(deadlines).isoformat() if deadlines else None,
        "nextLastDayToSend": (min(deadlines).astimezone(WARSAW) - dt.timedelta(microseconds=1)).date().isoformat()
        if deadlines else None,
        "missed": sum(1 for w in waiting if w.missed),
        "withoutKod2": sum(1 for w in waiting if not w.kod2 and w.mode != "total-failure"),
        "totalFailure": sum(1 for w in waiting if w.mode == "total-failure"),
        "invoices": [{"invoiceId": w.invoice_id, "file": rows[w.invoice_id].file_name if w.invoice_id in rows else None,
                      "state": str(rows[w.invoice_id].state) if w.invoice_id in rows else None, "mode": w.mode,
                      "reason": w.reason, "issuedAt": w.issued_at.isoformat(),
                      "deadline": w.deadline.isoformat() if w.deadline else None,
                      "lastDayToSend": (w.deadline.astimezone(WARSAW) - dt.timedelta(microseconds=1)).date().isoformat()
                      if w.deadline else None, "warned": w.warned, "missed": w.missed, "kod2": w.kod2,
                      "technicalCorrectionOf": w.corrects_hash} for w in waiting[:50]],
    }


async def _last_error(store: Store, company: str) -> dict[str, Any] | None:
    found = await store.invoices.latest_error(company)
    if found is None:
        return None
    row, error = found
    error = error if isinstance(error, dict) else {}
    return {"file": row.file_name, "state": str(row.state), "at": row.updated_at.isoformat(),
            "stage": error.get("stage"), "code": error.get("code"), "message": error.get("message")}


def render(status: DaemonStatus) -> str:
    lines = [f"ksefd: {'running' if status.running else 'not running'}"
             + (f" (pid {status.pid}, last heartbeat {status.last_heartbeat})" if status.last_heartbeat else "")]
    for c in status.companies:
        mode = "/".join(m for m, on in (("send", c.send), ("receive", c.receive)) if on) or "idle"
        lines.append(f"\n{c.name} (NIP {c.nip}, {mode})")
        lines.append(f"  queued {c.queued}, in KSeF {c.in_ksef}, accepted today {c.accepted_today} "
                     f"(total {c.accepted_total}), rejected today {c.rejected_today} (total {c.rejected_total})")
        if not c.send:
            lines.append("  sending is off (send = false in the config): files in outbox/ are left there unsent"
                         + (f"; {c.returned} claimed file(s) were put back into outbox/" if c.returned else ""))
        if c.redrops:
            lines.append(f"  re-drops of invoices already in KSeF: {c.redrops} (answered in sent/ from the original)")
        if c.receive:
            lines.append(f"  receiving since {c.receiving_since or 'its first cycle (not run yet)'}")
        if c.on_hold:
            lines.append(f"  ON HOLD since {c.on_hold['since']}: {c.on_hold['reason']} "
                         f"(next retry {c.on_hold['nextRetryAt']})")
        if c.oldest_waiting:
            lines.append(f"  oldest waiting: {c.oldest_waiting['file']} ({c.oldest_waiting['state']} since "
                         f"{c.oldest_waiting['since']})")
        if c.last_error:
            e = c.last_error
            lines.append(f"  last error: {e['file']}: {e['code']} {e['message']} ({e['at']})")
        if c.offline:
            lines += _offline_lines(c.offline)
        if c.receive:
            lines += render_inbox_lines(c.inbox)
    if status.certificates:
        lines.append("\nKSeF certificates")
        lines += [f"  {line}" for line in status.certificates]
    return "\n".join(lines)


def _offline_lines(offline: dict[str, Any]) -> list[str]:
    lines = []
    seen = offline.get("availability") or {}
    if seen.get("state") not in (None, "available"):
        lines.append(f"  KSeF: {seen['state'].upper()} since {seen.get('since')}: {seen.get('message')}")
    if offline["waiting"]:
        due = f"the first by the end of {offline['nextLastDayToSend']}" if offline["nextLastDayToSend"] else \
            "deadline set once the outage ends"
        lines.append(f"  offline: {offline['waiting']} issued offline, waiting to be sent with offlineMode ({due})")
    if offline["missed"]:
        lines.append(f"  OFFLINE DEADLINE MISSED for {offline['missed']} invoice(s): they are still sent as soon as "
                     "KSeF takes them")
    if offline["withoutKod2"]:
        lines.append(f"  WARNING: {offline['withoutKod2']} offline invoice(s) without KOD II (no Offline certificate "
                     "configured): they cannot legally be handed over to the buyer before their KSeF number")
    if offline["totalFailure"]:
        lines.append(f"  total failure of KSeF: {offline['totalFailure']} invoice(s) kept queued (no obligation to "
                     "send); ksefd sends them once KSeF is back")
    return lines


def to_json_text(status: DaemonStatus) -> str:
    return json.dumps(status.to_json(), ensure_ascii=False, indent=2)
