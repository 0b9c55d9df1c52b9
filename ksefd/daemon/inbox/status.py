"""The inbox pipeline's status as data (DESIGN.md convention 7), for `ksefd status`, /metrics and people:
per company, per subject type the checkpoint, the last cycle, the last error and when it is retried, the
last reconciliation with the KSeF numbers it found missing; and the pipeline's counters.

Kept in the state database (kv namespace `inbox_status`, one JSON document per company), written after
every cycle and audit; `read_inbox_status(store, company)` gives it back to another process.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from ksefd.store import Checkpoint, KeyValueRepo, Store

from .sync import InboxMetrics

STATUS_NAMESPACE = "inbox_status"
SINCE_NAMESPACE = "inbox_since"        # "<company>/<subject type>" -> where its first window started


async def note_receiving_since(kv: KeyValueRepo, company: str, subject_type: str, start: dt.datetime) -> None:
    await kv.put(SINCE_NAMESPACE, f"{company}/{subject_type}", _time(start) or "")


async def receiving_since(store: Store, company: str) -> str | None:
    """The earliest start of the company's receiving (its first window), None before the first cycle."""
    found = [v for k, v in (await store.kv.items(SINCE_NAMESPACE)).items() if k.split("/", 1)[0] == company]
    return min(found) if found else None


def _time(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


class StatusBook:
    def __init__(self, company: str, kv: KeyValueRepo, now: Callable[[], dt.datetime]) -> None:
        self.company = company
        self.kv = kv
        self.now = now
        self.errors: dict[str, dict[str, Any]] = {}
        self.reconciliations: dict[str, dict[str, Any]] = {}

    def set_error(self, subject_type: str, kind: str, message: str, retry_at: dt.datetime) -> bool:
        """Note a failure; True when it is new (not the same failure again), so it is logged loudly once."""
        previous = self.errors.get(subject_type)
        first = previous is None or previous["message"] != message
        since = self.now() if first or previous is None else dt.datetime.fromisoformat(previous["since"])
        self.errors[subject_type] = {"kind": kind, "message": message, "since": _time(since),
                                     "retryAt": _time(retry_at), "repeats": 0 if first or previous is None
                                     else previous["repeats"] + 1}
        return first

    def clear_error(self, subject_type: str) -> None:
        self.errors.pop(subject_type, None)

    def set_reconcile(self, subject_type: str, report: dict[str, Any]) -> None:
        self.reconciliations[subject_type] = {**report, "at": _time(self.now())}

    def document(self, metrics: InboxMetrics, checkpoints: list[Checkpoint], delivered_total: int = 0
                 ) -> dict[str, Any]:
        subjects: dict[str, Any] = {}
        for checkpoint in checkpoints:
            subjects[checkpoint.subject_type] = {
                "checkpoint": _time(checkpoint.next_from), "lastCycleAt": _time(checkpoint.last_cycle_at),
                "lastReconcileAt": _time(checkpoint.last_reconcile_at)}
        for name, error in self.errors.items():
            subjects.setdefault(name, {})["error"] = error
        for name, reconciled in self.reconciliations.items():
            subjects.setdefault(name, {})["reconcile"] = reconciled
        return {"company": self.company, "updatedAt": _time(self.now()), "deliveredTotal": delivered_total,
                "subjects": subjects, "metrics": metrics.as_dict()}

    async def save(self, metrics: InboxMetrics, checkpoints: list[Checkpoint], delivered_total: int = 0) -> None:
        document = self.document(metrics, checkpoints, delivered_total)
        await self.kv.put(STATUS_NAMESPACE, self.company, json.dumps(document))


async def read_inbox_status(store: Store, company: str) -> dict[str, Any] | None:
    """The last status the inbox pipeline of `company` saved (None: it never ran)."""
    text = await store.kv.get(STATUS_NAMESPACE, company)
    return dict(json.loads(text)) if text else None


def render_lines(document: dict[str, Any] | None) -> list[str]:
    """The inbox part of `ksefd status` for one company (text, indented like the rest)."""
    if document is None:
        return ["  inbox: not run yet"]
    metrics = document.get("metrics", {})
    lines = [f"  inbox: {document.get('deliveredTotal', 0)} delivered in all, {metrics.get('delivered', 0)} "
             f"since the daemon started ({metrics.get('exports', 0)} exports); updated {document.get('updatedAt')}"]
    for name, subject in sorted(document.get("subjects", {}).items()):
        lines.append(f"    {name}: checkpoint {subject.get('checkpoint')}, last cycle {subject.get('lastCycleAt')}")
        error = subject.get("error")
        if error:
            lines.append(f"      ERROR ({error['kind']}) since {error['since']}: {error['message']} "
                         f"(next try {error['retryAt']})")
        audit = subject.get("reconcile")
        if audit:
            found = f"{audit['missingCount']} missing and fetched {audit['fetched']}"
            listed = f": {', '.join(audit['missing'][:10])}" if audit["missing"] else ""
            lines.append(f"      audit {audit['at']} of {audit['checked']} invoices: {found}{listed}")
    return lines
