"""`ksefd validate FILE…`: the daemon's local checks on invoice files, without the network and without
touching any folder (issue #12 item 4). The codes and the error body are those of `rejected/NAME.error.json`
(ksefd.invoice.errors), so a file that passes here passes the daemon's intake, except for the two checks
that need the state database (duplicate-file, duplicate-number).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksefd.invoice import InvoiceRejected, check_invoice
from ksefd.ksef import sha256_b64

from .error_text import localize


@dataclass
class Verdict:
    file: str
    ok: bool
    error: dict[str, Any] | None = None              # the error.json body when refused
    facts: dict[str, Any] = field(default_factory=dict)


def validate_file(path: Path, *, nip: str, today: dt.date) -> Verdict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Verdict(str(path), False, {"stage": "read", "code": "unreadable", "message": f"{path}: "
                                          f"{exc.strerror or exc}", "details": {}, "hint": "check the path and "
                                          "that this account may read the file", "file": path.name})
    try:
        checked = check_invoice(data, file_name=path.name, company_nip=nip, today=today)
    except InvoiceRejected as rejected:
        return Verdict(str(path), False, {**localize(rejected.to_dict()), "file": path.name,
                                          "invoiceHash": sha256_b64(data)})
    return Verdict(str(path), True, facts={
        "invoiceNumber": checked.invoice_number, "invoiceType": checked.invoice_type,
        "sellerNip": checked.seller_nip, "issueDate": checked.issue_date.isoformat(),
        "invoiceHash": checked.sha256_b64, "size": checked.size})


def validate_files(paths: list[Path], *, nip: str, today: dt.date) -> list[Verdict]:
    return [validate_file(p, nip=nip, today=today) for p in paths]


def render(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        if v.ok:
            lines.append(f"OK      {v.file}  ({v.facts['invoiceType']} {v.facts['invoiceNumber']}, "
                         f"issued {v.facts['issueDate']})")
        else:
            assert v.error is not None
            lines.append(f"REFUSED {v.file}  [{v.error['code']}] {v.error['message']}")
            if v.error.get("hint"):
                lines.append(f"        fix: {v.error['hint']}")
    failed = sum(not v.ok for v in verdicts)
    lines.append(f"{len(verdicts) - failed} of {len(verdicts)} file(s) pass the local checks")
    return "\n".join(lines)


def to_json_text(verdicts: list[Verdict]) -> str:
    body = [{"file": v.file, "ok": v.ok, **({"error": v.error} if v.error else {}), **v.facts} for v in verdicts]
    return json.dumps(body, ensure_ascii=False, indent=2)
