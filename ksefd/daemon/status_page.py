"""The read-only HTML status page (issue #12 point 5): `/` lists the companies, `/company/NAME` shows one:
what is queued, what is held and why, the last errors, today's counts, the inbox and credential warnings.
The "invoice" column is the id every log line about that invoice carries (`invoice=`).

Everything comes from the state database (as `ksefd status`) and the config; every value is escaped
(`html.escape`), the page has no form, no script and no external resource, and it shows nothing secret:
file names, states, KSeF numbers, codes and the messages ksefd writes for people (which never carry a token).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

from ksefd import __version__, i18n
from ksefd.clock import WARSAW, Clock, warsaw_date
from ksefd.config import Company, Config
from ksefd.i18n import _
from ksefd.store import InvoiceState, Store

from .credential_expiry import credential_expiry
from .inbox.status import render_lines as inbox_lines
from .limit_waits import limit_wait_lines
from .state_words import state_label
from .status import WAITING, CompanyStatus, DaemonStatus, gather

S = InvoiceState
SHOWN_WAITING = 200            # rows of the queued table; the count above it is the full number
SHOWN_ERRORS = 20
TROUBLE = (S.REJECTED, S.DEFERRED, S.HELD, S.IN_DOUBT)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.2rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f2f2f2}.hold{background:#fde2e1;padding:.5rem;border-left:4px solid #c00}
.warn{background:#fff4d6;padding:.5rem;border-left:4px solid #d90}.ok{color:#080}.bad{color:#c00}
pre{background:#f7f7f7;padding:.5rem}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(value: dt.datetime | str | None) -> str:
    """Polish local time, to the second (the accountant's clock)."""
    if value is None:
        return ""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(WARSAW).strftime("%Y-%m-%d %H:%M:%S")


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]], *, raw_first: bool = False) -> str:
    head_html = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in rows:
        cells = [c if raw_first and i == 0 else _e(c) for i, c in enumerate(row)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not body:
        return f"<p>{_e(_('none'))}</p>"
    return f"<table><tr>{head_html}</tr>{''.join(body)}</table>"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"{i18n.current()}\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_STYLE}</style></head>"
            f"<body>{body}<hr><small>ksefd {_e(__version__)} &middot; {_e(_('read-only'))} &middot; "
            f"<a href=\"/metrics\">{_e(_('metrics'))}</a></small></body></html>")


def _running(status: DaemonStatus) -> str:
    state = (f"<span class=\"ok\">{_e(_('running'))}</span>" if status.running
             else f"<span class=\"bad\">{_e(_('not running'))}</span>")
    sentence = _e(_("ksefd is {state}; last heartbeat {when}"))      # translated, escaped, then filled
    return "<p>" + sentence.format(state=state, when=_e(_when(status.last_heartbeat))) + "</p>"


def _warning(company: Company, clock: Clock) -> str:
    expiry = credential_expiry(company)
    message = expiry.warning(warsaw_date(clock.now())) if expiry is not None else None
    return f"<p class=\"warn\">{_e(message)}</p>" if message else ""


def _hold(c: CompanyStatus) -> str:
    if not c.on_hold:
        return ""
    h = c.on_hold
    reason = str(h["reason"]).rstrip(".")
    # The reason is in the config's language (status.gather); so is the sentence around it (the daemon's).
    return (f"<p class=\"hold\"><b>{_e(_('On hold'))}</b> "
            + _e(_("since {since} ({code}): {reason}. Next try {retry}; held invoices go on by themselves once this "
                   "is fixed.", since=_when(h["since"]), code=h["code"], reason=reason, retry=_when(h["nextRetryAt"])))
            + "</p>")


async def index_page(store: Store, config: Config, clock: Clock, connected: Mapping[str, str]) -> str:
    status = await gather(store, config, clock)
    rows = []
    for c in status.companies:
        link = f"<a href=\"/company/{quote(c.name)}\">{_e(c.name)}</a>"
        rows.append([link, c.nip, _connection_words(connected.get(c.name, "idle")), c.queued, c.in_ksef,
                     c.accepted_today, c.rejected_today,
                     f"{c.on_hold['code']}: {c.on_hold['reason']}" if c.on_hold else ""])
    warnings = "".join(_warning(c, clock) for c in config.companies if c.send or c.receive)
    table = _table([_("company"), "NIP", "KSeF", _("queued"), _("in KSeF"), _("accepted today"), _("rejected today"),
                    _("on hold")], rows, raw_first=True)
    certificates = "".join(f"<li>{_e(line)}</li>" for line in status.certificates)
    title = _("ksefd status")
    body = (f"<h1>{_e(title)}</h1>{_running(status)}{warnings}{table}"
            + (f"<h2>{_e(_('KSeF certificates'))}</h2><ul>{certificates}</ul>" if certificates else ""))
    return _page(title, body)


async def company_page(store: Store, config: Config, clock: Clock, company: Company, connected: str) -> str:
    status = await gather(store, config, clock)
    c = next(s for s in status.companies if s.name == company.name)
    mode = "/".join(m for m, on in ((_("send"), c.send), (_("receive"), c.receive)) if on) or _("idle")
    counts = _table([_("queued"), _("in KSeF"), _("accepted today"), _("rejected today"), _("accepted in all"),
                     _("rejected in all")],
                    [[c.queued, c.in_ksef, c.accepted_today, c.rejected_today, c.accepted_total, c.rejected_total]])
    body = [f"<p><a href=\"/\">&larr; {_e(_('all companies'))}</a></p><h1>{_e(c.name)}</h1>",
            f"<p>NIP {_e(c.nip)}, {_e(mode)}, KSeF: {_e(_connection_words(connected))}</p>", _running(status),
            _warning(company, clock), _hold(c), f"<h2>{_e(_('Today'))}</h2>", counts]
    body += [f"<p>{_e(line.strip())}</p>" for line in limit_wait_lines(c.held_by_limits, clock.now())]
    waiting = await store.invoices.in_state(company.name, *WAITING, limit=SHOWN_WAITING)
    body += [f"<h2>{_e(_('Queued'))}</h2>", _table(
        [_("file"), _("state"), _("since"), _("attempts"), _("next attempt"), _("why"), _("invoice")],
        [[r.file_name, state_label(r.state), _when(r.updated_at), r.attempts, _when(r.next_attempt_at),
          _reason(r.last_error, r.state, c), r.id] for r in waiting])]
    held = [r for r in waiting if r.state is S.HELD]
    if held:
        why = c.on_hold["reason"] if c.on_hold else _("see each row")
        body += [f"<h2>{_e(_('Held ({count})', count=len(held)))}</h2><p>{_e(_('Why: {reason}', reason=why))}</p>"]
    errors = await _last_errors(store, company.name)
    body += [f"<h2>{_e(_('Last errors'))}</h2>",
             _table([_("at"), _("file"), _("state"), _("code"), _("message"), _("invoice")], errors)]
    if c.receive:
        body += [f"<h2>{_e(_('Inbox'))}</h2>", f"<pre>{_e(chr(10).join(inbox_lines(c.inbox)))}</pre>"]
    return _page(f"ksefd: {company.name}", "".join(body))


def _connection_words(state: str) -> str:
    """http_server.company_states' words ("connected", "connecting", "on hold: CODE", "idle") for people."""
    head, _sep, code = state.partition(": ")
    words = {"connected": _("connected"), "connecting": _("connecting"), "on hold": _("on hold"), "idle": _("idle")}
    return f"{words.get(head, head)}: {code}" if code else words.get(head, head)


def _reason(error: Any, state: InvoiceState, c: CompanyStatus) -> str:
    if isinstance(error, dict) and error.get("message"):
        return f"{error.get('code') or ''} {error['message']}".strip()
    if state is S.HELD and c.on_hold:
        return str(c.on_hold["reason"])
    return ""


async def _last_errors(store: Store, company: str) -> list[list[Any]]:
    """The newest steps into a state that means trouble (rejected, deferred, held, in doubt), with the error."""
    events = [e for e in await store.events.recent(company, limit=500)
              if e.to_state in {s.value for s in TROUBLE} and e.invoice_id is not None][:SHOWN_ERRORS]
    rows = {r.id: r for r in await store.invoices.get_many(e.invoice_id for e in events if e.invoice_id)}
    found = []
    for event in events:
        row = rows.get(event.invoice_id or 0)
        error = event.detail if isinstance(event.detail, dict) else {}
        error = error.get("error", error) if isinstance(error.get("error"), dict) else error
        if not error.get("message") and row is not None and isinstance(row.last_error, dict):
            error = row.last_error
        found.append([_when(event.at), row.file_name if row else f"#{event.invoice_id}",
                      state_label(event.to_state or ""), error.get("code", ""), error.get("message", ""),
                      event.invoice_id])
    return found
