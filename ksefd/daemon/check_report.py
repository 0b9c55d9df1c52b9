"""The report of `ksefd check`: findings with the fix to apply, one row per company, text and JSON forms."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ksefd.i18n import N_, _, translate

from .status_text import when

Level = Literal["ok", "warning", "error"]
_MARK = {"ok": N_("OK"), "warning": N_("WARNING"), "error": N_("ERROR")}
# The topics are codes (the JSON keeps them); the text shows them in the reader's language.
_TOPIC = {"config": N_("[config]"), "folders": N_("[folders]"), "state_db": N_("[state_db]"), "ksef": N_("[ksef]"),
          "latarnia": N_("[latarnia]"), "clock": N_("[clock]"), "credentials": N_("[credentials]"),
          "expiry": N_("[expiry]"), "auth": N_("[auth]"), "permissions": N_("[permissions]")}


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str      # config folders state_db ksef latarnia clock credentials expiry auth permissions
    message: str
    fix: str = ""


@dataclass
class CompanyCheck:
    name: str
    nip: str
    environment: str
    send: bool
    receive: bool
    credential: str                          # token | certificate | none
    identity: str = ""                       # who logs in: "token nip-…", "certificate Nip 5265877635"
    expires: str | None = None               # ISO date: certificate notAfter, or the end of token login
    days_left: int | None = None
    authenticated: bool = False
    permissions: list[str] = field(default_factory=list)      # what it may do in the company's context
    owner_permissions: list[str] | None = None                # 2.9.0 ownerPermissions, when KSeF sent them
    can_send: bool | None = None             # None: not known (not authenticated)
    can_receive: bool | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, topic: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(level, topic, message, fix))

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warning" for f in self.findings)


@dataclass
class CheckReport:
    config: str
    checked_at: str
    findings: list[Finding] = field(default_factory=list)     # not tied to one company
    companies: list[CompanyCheck] = field(default_factory=list)

    def add(self, level: Level, topic: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(level, topic, message, fix))

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings) and all(c.ok for c in self.companies)


def to_json(report: CheckReport) -> dict[str, Any]:
    companies = [{**asdict(c), "ok": c.ok} for c in report.companies]
    return {"ok": report.ok, "config": report.config, "checked_at": report.checked_at,
            "findings": [asdict(f) for f in report.findings], "companies": companies}


def to_json_text(report: CheckReport) -> str:
    return json.dumps(to_json(report), ensure_ascii=False, indent=2)


def _date(iso: str) -> str:
    """An ISO date of the report (JSON keeps ISO) as people in Poland write it: 31.12.2026."""
    try:
        return f"{dt.date.fromisoformat(iso):%d.%m.%Y}"
    except ValueError:
        return iso


def _yes_no(wanted: bool, able: bool | None) -> str:
    if not wanted:
        return "-"
    return "?" if able is None else _("yes") if able else _("NO")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _finding_lines(finding: Finding, indent: str) -> list[str]:
    topic = translate(_TOPIC[finding.topic]) if finding.topic in _TOPIC else f"[{finding.topic}]"
    lines = [f"{indent}{translate(_MARK[finding.level]):<7} {topic} {finding.message}"]
    if finding.fix:
        lines.append(f"{indent}        " + _("fix: {fix}", fix=finding.fix))
    return lines


def render(report: CheckReport) -> str:
    lines = [_("ksefd check: {config} ({time}; times in Europe/Warsaw)", config=report.config,
               time=when(report.checked_at)), ""]
    for finding in report.findings:
        lines += _finding_lines(finding, "")
    rows = [[_("COMPANY"), "NIP", _("ENV"), _("LOGIN"), _("EXPIRES"), _("SEND"), _("RECEIVE"), _("RESULT")]]
    for c in report.companies:
        expires = "-" if c.expires is None else _("{date} ({days} d)", date=_date(c.expires), days=c.days_left) \
            if (c.days_left or 0) >= 0 else _("{date} (expired)", date=_date(c.expires))
        result = (_("OK") if not c.warnings else _("OK, warnings: {count}", count=c.warnings)) if c.ok \
            else _("FAIL")
        login = {"token": _("token"), "certificate": _("certificate"), "none": "-"}.get(c.credential, c.credential)
        rows.append([c.name, c.nip, c.environment, login, expires, _yes_no(c.send, c.can_send),
                     _yes_no(c.receive, c.can_receive), result])
    lines += ["", *_table(rows)]
    for c in report.companies:
        shown = [f for f in c.findings if f.level != "ok"]
        if shown:
            lines += ["", f"{c.name} ({c.nip}):"]
            for finding in shown:
                lines += _finding_lines(finding, "  ")
    lines += ["", _("all companies can do what their config asks") if report.ok
              else _("some companies cannot do what their config asks: apply the fixes above, then run ksefd check "
                     "again")]
    return "\n".join(lines)
