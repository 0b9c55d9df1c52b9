"""The report of `ksefd check`: findings with the fix to apply, one row per company, text and JSON forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["ok", "warning", "error"]
_MARK = {"ok": "OK", "warning": "WARNING", "error": "ERROR"}


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


def _yes_no(wanted: bool, able: bool | None) -> str:
    if not wanted:
        return "-"
    return "?" if able is None else "yes" if able else "NO"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _finding_lines(finding: Finding, indent: str) -> list[str]:
    lines = [f"{indent}{_MARK[finding.level]:<7} [{finding.topic}] {finding.message}"]
    if finding.fix:
        lines.append(f"{indent}        fix: {finding.fix}")
    return lines


def render(report: CheckReport) -> str:
    lines = [f"ksefd check: {report.config} ({report.checked_at})", ""]
    for finding in report.findings:
        lines += _finding_lines(finding, "")
    rows = [["COMPANY", "NIP", "ENV", "LOGIN", "EXPIRES", "SEND", "RECEIVE", "RESULT"]]
    for c in report.companies:
        expires = "-" if c.expires is None else f"{c.expires} ({c.days_left} d)" if (c.days_left or 0) >= 0 \
            else f"{c.expires} (expired)"
        result = ("OK" if not c.warnings else f"OK, {c.warnings} warning{'s' * (c.warnings > 1)}") if c.ok else "FAIL"
        rows.append([c.name, c.nip, c.environment, c.credential, expires, _yes_no(c.send, c.can_send),
                     _yes_no(c.receive, c.can_receive), result])
    lines += ["", *_table(rows)]
    for c in report.companies:
        shown = [f for f in c.findings if f.level != "ok"]
        if shown:
            lines += ["", f"{c.name} ({c.nip}):"]
            for finding in shown:
                lines += _finding_lines(finding, "  ")
    lines += ["", "all companies can do what their config asks" if report.ok
              else "some companies cannot do what their config asks: apply the fixes above, then run ksefd check again"]
    return "\n".join(lines)
