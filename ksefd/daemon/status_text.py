"""How `ksefd status` words things for people (issue #14 points 2 and 3): times in Europe/Warsaw without
microseconds (the JSON keeps ISO 8601 with offsets), the fix next to a hold's reason, the next inbox cycle,
KSeF's reachability when the daemon recorded it, and never a bare "None".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ksefd.clock import WARSAW
from ksefd.i18n import N_, _, translate

# The taxpayer's web application (Aplikacja Podatnika) per environment, where permissions are granted and
# tokens generated (PROTOCOL.md §0, the environments table).
WEB_APP = {"test": "https://ap-test.ksef.mf.gov.pl/web/", "demo": "https://ap-demo.ksef.mf.gov.pl/web/",
           "prod": "https://ap.ksef.mf.gov.pl/web/"}
ENVIRONMENT_LABEL = {"test": "TEST", "demo": "DEMO", "prod": "PRODUCTION"}    # English: logs and messages


def parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def when(value: Any, missing: str | None = None) -> str:
    """An ISO 8601 time (or datetime) as people in Poland read it: 06.12.2026 23:05:12, Warsaw time."""
    parsed = parse_time(value)
    return f"{parsed.astimezone(WARSAW):%d.%m.%Y %H:%M:%S}" if parsed else (missing or _("unknown"))


def in_words(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return _("{n} s", n=seconds)
    if seconds < 90 * 60:
        return _("{n} min", n=round(seconds / 60))
    if seconds < 48 * 3600:
        return _("{n} h", n=f"{seconds / 3600:.1f}")
    return _("{n} days", n=round(seconds / 86400))


def relative(value: Any, now: dt.datetime) -> str:
    """`when(value)` with "in 5 min" / "12 min ago"."""
    parsed = parse_time(value)
    if parsed is None:
        return _("unknown")
    delta = (parsed - now).total_seconds()
    if delta >= 0:
        return _("{time} (in {span})", time=when(parsed), span=in_words(delta))
    return _("{time} ({span} ago)", time=when(parsed), span=in_words(-delta))


def environment_text(environment: str, base_url: str | None) -> str:
    label = {"test": _("KSeF TEST"), "demo": _("KSeF DEMO"), "prod": _("KSeF PRODUCTION")}.get(
        environment, f"KSeF {environment}")
    return _("{environment} at {url}", environment=label, url=base_url) if base_url else label


def hold_fix(code: str, environment: str, company: str, config: str) -> str:
    """What a person does about a hold, by its stable code (failures.classify), ending with how to try now."""
    app = WEB_APP.get(environment, WEB_APP["prod"])
    fixes = {
        "credentials": _("correct the credential file named above (path, content, password) in the config"),
        "authentication-failed": _("the token or certificate is revoked, expired, or for another NIP or "
                                   "environment: make a new one in the taxpayer's application (Aplikacja "
                                   "Podatnika) {app} and replace the file", app=app),
        "unauthorized": _("make a new token or certificate in the taxpayer's application (Aplikacja Podatnika) "
                          "{app} and replace the file", app=app),
        "missing-permission": _("grant the permission named above in the taxpayer's application (Aplikacja "
                                "Podatnika) {app}, or use a token that has it", app=app),
        "wrong-url": _("check environment and base_url in the config ([ksef] or the company's)"),
        "ksef-21001": _("report it to the ksefd maintainers with the log; the invoices wait"),
    }
    fix = fixes.get(code) or _("do what the reason says")
    return _("{fix}; then `ksefd resume -c {config} {company}` tries at once", fix=fix, config=config,
             company=company)


def availability_lines(seen: dict[str, Any] | None, now: dt.datetime) -> list[str]:
    """KSeF's and Latarnia's state as the daemon recorded it (kv `availability`); nothing before it does."""
    if not seen:
        return []
    state = str(seen.get("state") or "")
    if state == "available":
        return [_("  KSeF: reachable")]
    since = _(" since {time}", time=relative(seen.get("since"), now)) if seen.get("since") else ""
    source = _("announced on Latarnia") if seen.get("announced") else _("seen by ksefd")
    message = f": {seen['message']}" if seen.get("message") else ""
    answers = _("; KSeF still answers") if seen.get("ksefAnswers") else ""
    words = {"unreachable": _("UNREACHABLE"), "unavailability": _("MAINTENANCE"), "failure": _("FAILURE"),
             "total-failure": _("TOTAL FAILURE")}       # availability.py Verdict.state
    return [_("  KSeF: {state}{since} ({source}){message}{answers}", state=words.get(state, state.upper()),
              since=since, source=source, message=message, answers=answers)]


def next_inbox_cycle(document: dict[str, Any] | None, cycle_minutes: float) -> dt.datetime | None:
    """When the inbox looks at KSeF next: the earliest per subject type of its error's retry or its last
    cycle plus [receiving] cycle_minutes; None before its first cycle (which runs at start)."""
    if not document:
        return None
    found: list[dt.datetime] = []
    for subject in document.get("subjects", {}).values():
        error = subject.get("error") or {}
        retry = parse_time(error.get("retryAt"))
        last = parse_time(subject.get("lastCycleAt"))
        if retry is not None:
            found.append(retry)
        elif last is not None:
            found.append(last + dt.timedelta(minutes=cycle_minutes))
    return min(found) if found else None


# The config's subject types (receiving.subject_types) as an accountant says them (PROTOCOL.md §6.1:
# Subject1 = the seller's view, Subject2 = the buyer's, Subject3 = a third party's, SubjectAuthorized = an
# authorised entity's).
SUBJECT_WORDS = {"Subject1": N_("as the seller"), "Subject2": N_("as the buyer"), "Subject3": N_("as a third party"),
                 "SubjectAuthorized": N_("as an authorised entity")}


def inbox_lines(document: dict[str, Any] | None, now: dt.datetime) -> list[str]:
    if document is None:
        return [_("  inbox: its first cycle has not run yet (it runs when the daemon starts)")]
    metrics = document.get("metrics", {})
    lines = [_("  inbox: {total} delivered in all, {recent} since the daemon started",
               total=document.get("deliveredTotal", 0), recent=metrics.get("delivered", 0))]
    for name, subject in sorted(document.get("subjects", {}).items()):
        lines.append(_("    {subject} ({code}): invoices up to {checkpoint}, last cycle {cycle}",
                       subject=translate(SUBJECT_WORDS[name]) if name in SUBJECT_WORDS else name, code=name,
                       checkpoint=when(subject.get("checkpoint"), _("none yet")),
                       cycle=when(subject.get("lastCycleAt"), _("not yet"))))
        error = subject.get("error")
        if error:
            lines.append(_("      ERROR since {since}: {message} (next try {retry})", since=when(error.get("since")),
                           message=error.get("message"), retry=relative(error.get("retryAt"), now)))
        audit = subject.get("reconcile")
        if audit:
            listed = f": {', '.join(audit['missing'][:10])}" if audit.get("missing") else ""
            lines.append(_("      check of {checked} invoices on {at}: {missing} missing, {fetched} fetched{listed}",
                           checked=audit.get("checked", 0), at=when(audit.get("at")),
                           missing=audit.get("missingCount", 0), fetched=audit.get("fetched", 0), listed=listed))
    return lines
