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

from ksefd import i18n
from ksefd.clock import WARSAW, Clock
from ksefd.config import Config
from ksefd.i18n import _
from ksefd.store import IN_KSEF_STATES, InvoiceState, Store

from .certificate_renewal import renewal_lines
from .inbox.status import read_inbox_status, receiving_since
from .limit_waits import limit_wait_lines
from .state_words import state_label
from .status_text import (
    availability_lines,
    environment_text,
    hold_fix,
    inbox_lines,
    next_inbox_cycle,
    parse_time,
    relative,
    when,
)
from .words import shown

AVAILABILITY_NAMESPACE = "availability"    # written by the availability monitor (issue #11), per company

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
    environment: str = "test"                    # issue #14 point 3: which KSeF
    ksef_url: str | None = None                  # None: the environment's official address
    availability: dict[str, Any] | None = None   # KSeF/Latarnia as the daemon recorded it (kv `availability`)
    next_inbox_cycle: str | None = None          # when the inbox looks at KSeF next (None: before its first)
    held_by_limits: dict[str, Any] | None = None  # what KSeF's rate limits hold back now (limit_waits.py)


@dataclass
class DaemonStatus:
    running: bool
    last_heartbeat: str | None
    pid: int | None
    companies: list[CompanyStatus]
    certificates: list[str] = field(default_factory=list)     # renewals of KSeF certificates (issue #13)
    config: str | None = None                                  # the config file (for the commands suggested)
    switched_off: list[str] = field(default_factory=list)     # companies with enabled = false
    generated_at: str | None = None
    language: str = "pl"                                       # what `render` speaks ([daemon] language)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start_of_today(clock: Clock) -> dt.datetime:
    local = clock.now().astimezone(WARSAW)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=WARSAW).astimezone(dt.UTC)


async def gather(store: Store, config: Config, clock: Clock) -> DaemonStatus:
    today = start_of_today(clock)
    companies = []
    for c in config.companies:
        found = await _company(store, c.name, c.nip, c.send, c.receive, today, config.language)
        found.environment, found.ksef_url = c.environment, c.base_url
        shown = await store.kv.get(AVAILABILITY_NAMESPACE, c.name)
        found.availability = json.loads(shown) if shown else None
        cycle = next_inbox_cycle(found.inbox, c.receiving.cycle_minutes) if c.receive else None
        found.next_inbox_cycle = cycle.isoformat() if cycle else None
        companies.append(found)
    beat = next((b for b in await store.heartbeat.read() if b.component == "daemon"), None)
    running = beat is not None and clock.now() - beat.at < HEARTBEAT_STALE and not (
        isinstance(beat.detail, dict) and beat.detail.get("stopped"))
    held = beat.detail.get("heldByLimits") if running and beat is not None and isinstance(beat.detail, dict) else None
    for found in companies:
        found.held_by_limits = held.get(found.name) if isinstance(held, dict) else None
    return DaemonStatus(running, beat.at.isoformat() if beat else None, beat.pid if beat else None, companies,
                        await renewal_lines(store, clock.now()), str(config.source) if config.source else None,
                        list(config.switched_off), clock.now().isoformat(), config.language)


async def _company(store: Store, name: str, nip: str, send: bool, receive: bool, today: dt.datetime,
                   language: str) -> CompanyStatus:
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
            "code": hold.code, "reason": shown(hold.reason, language), "since": hold.since.isoformat(),
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
    """For people, in the config's language: times in Europe/Warsaw without microseconds, the fix next to
    every hold (issue #14)."""
    with i18n.using(status.language):
        return _render(status)


def _render(status: DaemonStatus) -> str:
    now = parse_time(status.generated_at) or dt.datetime.now(dt.UTC)
    config = status.config or "CONFIG"
    seen = _("last heartbeat {time}", time=when(status.last_heartbeat)) if status.last_heartbeat \
        else _("never started")
    state = _("running") if status.running else _("not running")
    detail = _("pid {pid}, {seen}", pid=status.pid, seen=seen) if status.pid else seen
    lines = [_("ksefd: {state} ({detail}); times in Europe/Warsaw", state=state, detail=detail)]
    for c in status.companies:
        mode = {(True, True): _("sends and receives"), (True, False): _("sends only"),
                (False, True): _("receives only")}.get((c.send, c.receive), _("neither sends nor receives"))
        lines.append("\n" + _("{name} (NIP {nip}, {environment}, {mode})", name=c.name, nip=c.nip,
                                environment=environment_text(c.environment, c.ksef_url), mode=mode))
        lines += availability_lines(c.availability, now)
        if c.on_hold:
            hold = c.on_hold
            lines.append(_("  ON HOLD since {since}: {reason}", since=when(hold["since"]), reason=hold["reason"]))
            lines.append(_("    fix: {fix}", fix=hold_fix(hold["code"], c.environment, c.name, config)))
            if hold.get("nextRetryAt"):
                lines.append(_("    ksefd tries again by itself {time}", time=relative(hold["nextRetryAt"], now)))
        if c.send:
            lines.append(_("  sending: queued {queued}, in KSeF {in_ksef}, accepted today {accepted_today} (total "
                           "{accepted_total}), rejected today {rejected_today} (total {rejected_total})",
                           queued=c.queued, in_ksef=c.in_ksef, accepted_today=c.accepted_today,
                           accepted_total=c.accepted_total, rejected_today=c.rejected_today,
                           rejected_total=c.rejected_total))
            lines += limit_wait_lines(c.held_by_limits, now)
        elif c.returned or c.queued:
            lines.append(_("  sending is off (send = false in the config): files in outbox/ are left there unsent")
                         + (_("; {count} claimed file(s) were put back into outbox/", count=c.returned)
                            if c.returned else ""))
        if c.redrops:
            lines.append(_("  re-drops of invoices already in KSeF: {count} (answered in sent/ from the original)",
                           count=c.redrops))
        if c.oldest_waiting:
            lines.append(_("  oldest waiting: {file} ({state} since {since})", file=c.oldest_waiting["file"],
                           state=state_label(c.oldest_waiting["state"]), since=when(c.oldest_waiting["since"])))
        if c.last_error:
            e = c.last_error
            code = f"{e['code']}: " if e.get("code") else ""
            lines.append(_("  last error: {file}: {code}{message} ({at})", file=e["file"], code=code,
                           message=e.get("message") or _("no details"), at=when(e["at"])))
        if c.offline:
            lines += _offline_lines(c.offline)
        if c.receive:
            since = when(c.receiving_since) if c.receiving_since else _("its first cycle (not run yet)")
            cycle = relative(c.next_inbox_cycle, now) if c.next_inbox_cycle else _("when the daemon starts")
            lines.append(_("  receiving: invoices since {since}; next inbox cycle {cycle}", since=since, cycle=cycle))
            lines += inbox_lines(c.inbox, now)
    for name in status.switched_off:
        lines.append("\n" + _("{name}: switched off (enabled = false in the config)", name=name))
    if status.certificates:
        lines.append("\n" + _("KSeF certificates"))
        lines += [f"  {line}" for line in status.certificates]
    return "\n".join(lines)


def _offline_lines(offline: dict[str, Any]) -> list[str]:
    lines = []           # KSeF's availability itself: availability_lines (status_text.py), in Warsaw time
    if offline["waiting"]:
        due = _("the first by the end of {day}", day=offline["nextLastDayToSend"]) if offline["nextLastDayToSend"] \
            else _("deadline set once the outage ends")
        lines.append(_("  offline: {count} issued offline, waiting to be sent with offlineMode ({due})",
                       count=offline["waiting"], due=due))
    if offline["missed"]:
        lines.append(_("  OFFLINE DEADLINE MISSED for {count} invoice(s): they are still sent as soon as KSeF takes "
                       "them", count=offline["missed"]))
    if offline["withoutKod2"]:
        lines.append(_("  WARNING: {count} offline invoice(s) without KOD II (no Offline certificate configured): "
                       "they cannot legally be handed over to the buyer before their KSeF number; configure "
                       "offline_certificate for the company", count=offline["withoutKod2"]))
    if offline["totalFailure"]:
        lines.append(_("  total failure of KSeF: {count} invoice(s) kept queued (no obligation to send); ksefd "
                       "sends them once KSeF is back", count=offline["totalFailure"]))
    return lines


def to_json_text(status: DaemonStatus) -> str:
    return json.dumps(status.to_json(), ensure_ascii=False, indent=2)
