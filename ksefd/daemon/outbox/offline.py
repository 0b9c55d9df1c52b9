"""The offline desk: one company's offline invoicing (issue #11 items 2, 3, 5 and 7; PROTOCOL.md §8).

It runs beside the dispatcher, not inside it, so an invoice dropped during an outage gets its KOD I / KOD II
within a second, however long a login attempt into an unreachable KSeF takes. Each round it:

1. takes offline24 requests: a file the ERP drops into `outbox/offline/` is recorded (its hash, in SQLite)
   and then moved into the outbox, where intake takes it as usual; once checked it is issued offline at once;
2. issues invoices offline (QUEUED, DEFERRED or HELD -> OFFLINE through the ledger, then the artefacts,
   offline_files.py), when the company's policy (`[sending] offline`) is "auto" and KSeF is down:
   at once during an announced outage (Latarnia MAINTENANCE / FAILURE / TOTAL_FAILURE: the Ministry's
   modes), or when KSeF is unreachable without an announcement and the invoice has waited
   `offline_after_seconds` (the taxpayer's offline24, labelled so). Requests and technical corrections
   are issued whatever the policy;
3. technical corrections (§8.4): an invoice with the seller, type and number of an offline invoice KSeF
   rejected is issued offline as its correction (sent online with offlineMode and hashOfCorrectedInvoice);
4. keeps each waiting offline invoice's deadline (deadlines.py) up to date with the announcements, and
   warns when half and 90 % of the time is gone, and loudly once it is missed (the invoice is still sent).

Sending is the dispatcher's (worker.py): OFFLINE invoices first, oldest deadline first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import traceback
from typing import Any

from ksefd import spool
from ksefd.clock import WARSAW, Clock
from ksefd.config import Company
from ksefd.i18n import _, translate
from ksefd.ksef import CredentialsError, sha256_b64
from ksefd.store import InvoiceRow, InvoiceState, OfflineInvoice, Store

from ..availability import KsefAvailability, Verdict
from ..failures import LastingFailure
from ..runtime import IDLE_LOOK_SECONDS, wait_for
from .deadlines import OFFLINE24, TOTAL_FAILURE, Deadline, deadline, elapsed_share
from .ledger import Ledger
from .offline_files import MODE_LABELS, OfflineFiles, Signer, load_signer, signer_version
from .watch import OutboxWatcher

S = InvoiceState
AVAILABLE = Verdict("available", None, False, "no availability monitor")
REVIEW_SECONDS = 60.0            # deadlines and warnings are looked at this often (and on each announcement)
REQUEST_FOLDER = "offline"       # outbox/offline/: offline24 on demand
AVAILABILITY = "availability"    # kv namespace: each company's last verdict, for `ksefd status`


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def last_day(deadline_at: dt.datetime | None) -> str | None:
    """The last day to send, as a person reads it (Polish calendar day): the deadline is that day's end."""
    if deadline_at is None:
        return None
    return (deadline_at.astimezone(WARSAW) - dt.timedelta(microseconds=1)).date().isoformat()


class OfflineDesk:
    def __init__(self, company: Company, ledger: Ledger, artefacts: OfflineFiles,
                 monitor: KsefAvailability | None, clock: Clock, log: Any, *, settle_seconds: float,
                 rescan_seconds: float, reserved: set[int]) -> None:
        self.company = company
        self.ledger = ledger
        self.store: Store = ledger.store
        self.artefacts = artefacts
        self.monitor = monitor
        self.clock = clock
        self.log = log
        self.reserved = reserved                   # invoices a send task holds: never touched here
        self.requests = company.folders.outbox / REQUEST_FOLDER
        self.stability = spool.StabilityTracker(clock, settle_seconds)
        self.settle_seconds = settle_seconds
        self.rescan_seconds = rescan_seconds       # outbox/offline/ is looked at this often (and on each wake-up)
        self.watcher: OutboxWatcher | None = None  # the daemon's watcher, when it watches outbox/offline/ too
        self._offline_waiting = False              # the last review found invoices issued offline, not yet sent
        # Held while invoices are issued offline, and by the dispatcher while it picks QUEUED invoices to send:
        # an invoice is either issued offline or sent online, never both at once.
        self.lock = asyncio.Lock()
        self._signer: Signer | None = None
        self._signer_problem: str | None = None
        self._signer_loaded: tuple[int, ...] | bool | None = False    # the files' version loaded (False: none)
        self._reviewed_at: dt.datetime | None = None
        self._reviewed_version = -1
        self._repaired = False
        self._shown: str | None = None
        self._failing = LastingFailure(log, "offline.step_failed")
        self.pending = 0

    @property
    def policy(self) -> str:
        return self.company.sending.offline

    def verdict(self) -> Verdict:
        return self.monitor.view() if self.monitor is not None else AVAILABLE

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self, draining: asyncio.Event) -> None:
        self.requests.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.artefacts.prepare)
        while not draining.is_set():
            try:
                wait = await self.step()
                self._failing.cleared()
            except Exception as exc:       # a bug or a full disk: logged (once, then slowly) and retried
                self._failing.failed(error=repr(exc), where=traceback.format_exc(limit=-3))
                wait = 5.0
            await wait_for(self.ledger.offline_due, self.clock, wait)

    async def step(self) -> float:
        """One round; returns the seconds until the next look."""
        if not self._repaired:
            await self.repair()
        await self.take_requests()
        await self._show_availability()
        async with self.lock:
            wait = await self.issue_due()
        await self.review()
        rescan = self.rescan_seconds
        if self.watcher is not None:     # inotify reports every request dropped here: the rescan is a safety net
            rescan = self.watcher.rescan_interval(self.requests, rescan)
        wait = min(wait, rescan)
        if self._offline_waiting:        # their deadlines and warnings are looked at every REVIEW_SECONDS
            wait = min(wait, REVIEW_SECONDS)
        if self.pending:
            wait = min(wait, max(self.settle_seconds / 2, 0.05))
        return wait

    async def _show_availability(self) -> None:
        """The verdict as `ksefd status` shows it (kv `availability`/<company>), written when it changes."""
        verdict = self.verdict()
        body = {**verdict.to_json(), "policy": self.policy,
                "latarnia": self.monitor.latarnia_url if self.monitor is not None else None,
                "latarniaError": self.monitor.latarnia_error if self.monitor is not None else None}
        text = json.dumps(body, sort_keys=True)
        if text != self._shown:
            await self.store.kv.put(AVAILABILITY, self.company.name, text)
            self._shown = text

    # --- 1. offline24 on demand -----------------------------------------------------------------

    async def take_requests(self) -> int:
        try:
            candidates = await asyncio.to_thread(spool.scan, self.requests)
        except FileNotFoundError:
            return 0
        self.stability.retain(candidates)
        stable = [p for p in candidates if self.stability.is_stable(p)]
        self.pending = len(candidates) - len(stable)
        taken = 0
        for path in stable:
            target = self.company.folders.outbox / path.name
            if target.exists():          # the outbox holds a file of that name: next round
                self.pending += 1
                continue
            data = await asyncio.to_thread(path.read_bytes)
            # Recorded before the move: after a crash the file in the outbox is still known as a request.
            await self.store.offline.request(self.company.name, sha256_b64(data), path.name)
            if spool.claim(path, target):
                self.stability.forget(path)
                taken += 1
                self.log.info("offline.requested", file=path.name)
        return taken

    # --- 2. and 3. issuing ----------------------------------------------------------------------

    async def issue_special(self) -> None:
        """Requested offline24 and technical corrections (the dispatcher asks first, under the lock)."""
        await self._special()

    async def issue_due(self) -> float:
        """Issue what must be issued now; returns when to look again (an unreachable KSeF's waiting time; with
        KSeF available, only the safety net: an outage wakes the desk through `offline_due`). Called with `lock`
        held."""
        wait = IDLE_LOOK_SECONDS
        await self._special()
        if self.policy != "auto":
            return wait
        verdict = self.verdict()
        if not verdict.down:
            return wait
        now = self.clock.now()
        after = dt.timedelta(seconds=self.company.sending.offline_after_seconds)
        ids = await self.store.invoices.ids_in(self.company.name, [S.QUEUED, S.DEFERRED, S.HELD])
        for row in await self.store.invoices.get_many([i for i in ids if i not in self.reserved]):
            if row.offline or row.issue_date is None or row.seller_nip is None:
                continue
            if verdict.announced:          # the Ministry's mode: unavailability | failure | total-failure
                await self.issue(row, verdict.state, verdict.message, verdict.state, verdict.event_id)
            elif now - row.created_at >= after:
                await self.issue(row, OFFLINE24, verdict.message, "offline24-unreachable")
            else:
                wait = min(wait, (row.created_at + after - now).total_seconds())
        return max(0.05, wait)

    async def _special(self) -> None:
        for invoice_id, requested, original in await self.store.offline.special(self.company.name):
            if invoice_id in self.reserved:
                continue
            row = await self.store.invoices.get(invoice_id)
            if row is None:
                continue
            if original is not None:
                await self._correction(row, original)
            elif requested:
                await self.issue(row, OFFLINE24, _("offline24 requested by the ERP (outbox/offline/)"), "offline24")

    async def issue(self, row: InvoiceRow, mode: str, reason: str, label: str, event_id: int | None = None,
                    corrects: InvoiceRow | None = None) -> InvoiceRow | None:
        assert row.issue_date is not None
        now = self.clock.now()
        found = deadline(mode, row.issue_date, now, self._history(), now)
        stem = self.artefacts.stem_for(row)
        signer = await self._load_signer()
        record = OfflineInvoice(row.id, self.company.name, mode, reason, event_id, now, found.at, stem,
                                signer is not None and mode != TOTAL_FAILURE, 0, False,
                                corrects.id if corrects else None, corrects.sha256 if corrects else None)
        moved = await self.ledger.go_offline(row, record, show={
            "offline": {"mode": mode, "deadline": _iso(found.at), "json": str(self.artefacts.json_path(stem))}})
        if moved is None:
            return None
        body = await asyncio.to_thread(self.artefacts.write_issued, moved, stem,
                                       self._json(moved, record, found, label, corrects), signer,
                                       self._signer_problem)
        report = self.log.warning if body["warnings"] else self.log.info
        report("offline.issued", file=row.file_name, mode=mode, deadline=_iso(found.at), kod2=record.kod2,
               json=str(self.artefacts.json_path(stem)), warnings=body["warnings"] or None)
        return moved

    def _json(self, row: InvoiceRow, record: OfflineInvoice, found: Deadline, label: str,
              corrects: InvoiceRow | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "invoiceId": row.id, "file": row.file_name, "invoiceNumber": row.invoice_number,
            "invoiceType": row.invoice_type, "sellerNip": row.seller_nip,
            "issueDate": row.issue_date.isoformat() if row.issue_date else None, "invoiceHash": row.sha256,
            "mode": record.mode, "modeLabel": translate(MODE_LABELS[label]), "announced": record.event_id is not None,
            "eventId": record.event_id, "reason": record.reason, "issuedAt": record.issued_at.isoformat(),
            "deadline": _iso(found.at), "lastDayToSend": last_day(found.at), "deadlineRule": found.reason,
            "ksefNumber": None,
            "environment": self.company.environment, "warnings": [],
        }
        if record.mode == TOTAL_FAILURE:
            body["warnings"] = [_("total failure of KSeF: the invoice may be issued without QR codes (PROTOCOL.md "
                                  "§8.1); ksefd sends it once KSeF is back")]
        if corrects is not None:
            body["technicalCorrectionOf"] = {"file": corrects.file_name, "invoiceHash": corrects.sha256,
                                             "rejected": corrects.result_name}
        return body

    async def _correction(self, row: InvoiceRow, original_id: int) -> None:
        original = await self.store.invoices.get(original_id)
        if original is None:
            return
        first = await self.store.offline.get(original_id)
        mode = first.mode if first is not None else OFFLINE24
        moved = await self.issue(row, mode, _("technical correction of {file}, which KSeF rejected (status "
                                              "{status}); PROTOCOL.md §8.4", file=repr(original.file_name),
                                              status=str(original.status_code)), mode if
                                 mode != OFFLINE24 else "offline24", corrects=original)
        if moved is not None:
            self.log.info("offline.technical_correction", file=row.file_name, original=original.file_name,
                          original_hash=original.sha256)

    async def _load_signer(self) -> Signer | None:
        """Loaded once, and again when a renewal replaces the certificate's files."""
        version = signer_version(self.company)
        if self._signer_loaded is False or version != self._signer_loaded:
            self._signer_loaded = version
            self._signer, self._signer_problem = None, None
            try:
                self._signer = await asyncio.to_thread(load_signer, self.company)
            except CredentialsError as exc:
                self._signer_problem = _("the Offline certificate cannot be used ({error}), so KOD II could not be "
                                         "made: the invoice cannot legally be handed over to the buyer yet; "
                                         "replace the certificate files named in offline_certificate",
                                         error=str(exc))
                self.log.error("offline.certificate_unusable", error=str(exc))
        return self._signer

    def _history(self) -> list[Any]:
        return list(self.monitor.history) if self.monitor is not None else []

    # --- after a crash --------------------------------------------------------------------------

    async def repair(self) -> None:
        """OFFLINE invoices whose artefacts a crash prevented: write them now (same content, same place)."""
        self._repaired = True
        for record in await self.store.offline.waiting(self.company.name):
            if self.artefacts.read(record.stem) is not None:
                continue
            row = await self.store.invoices.get(record.invoice_id)
            if row is None or row.issue_date is None:
                continue
            corrects = await self.store.invoices.get(record.corrects_id) if record.corrects_id else None
            found = deadline(record.mode, row.issue_date, record.issued_at, self._history(), self.clock.now())
            label = "offline24" if record.mode == OFFLINE24 else record.mode
            await asyncio.to_thread(self.artefacts.write_issued, row, record.stem,
                                    self._json(row, record, found, label, corrects), await self._load_signer(),
                                    self._signer_problem)
            self.log.info("offline.artefacts_repaired", file=row.file_name)

    # --- 4. deadlines -------------------------------------------------------------------------------

    async def review(self) -> None:
        now = self.clock.now()
        version = self.monitor.version if self.monitor is not None else 0
        if (version == self._reviewed_version and self._reviewed_at is not None
                and (now - self._reviewed_at).total_seconds() < REVIEW_SECONDS):
            return
        self._reviewed_at, self._reviewed_version = now, version
        records = await self.store.offline.waiting(self.company.name)
        self._offline_waiting = bool(records)
        for record in records:
            row = await self.store.invoices.get(record.invoice_id)
            if row is None or row.issue_date is None:
                continue
            found = deadline(record.mode, row.issue_date, record.issued_at, self._history(), now)
            if found.at != record.deadline:
                await self.store.offline.set_deadline(record.invoice_id, found.at)
                await asyncio.to_thread(self.artefacts.update, record.stem,
                                        {"deadline": _iso(found.at), "lastDayToSend": last_day(found.at),
                                         "deadlineRule": found.reason})
                # Set once a failure ends (info); moved after it was known, e.g. a new failure (warning).
                report = self.log.info if record.deadline is None else self.log.warning
                report("offline.deadline_changed", file=row.file_name, deadline=_iso(found.at),
                       was=_iso(record.deadline), rule=found.basis)
            await self._warn(row, record, found, now)

    async def _warn(self, row: InvoiceRow, record: OfflineInvoice, found: Deadline, now: dt.datetime) -> None:
        share = elapsed_share(record.issued_at, found.at, now)
        if share is None:
            return
        if share >= 1.0 and not record.missed:
            await self.store.offline.mark(record.invoice_id, missed=True, warned=90)
            self.log.error("offline.deadline_missed", file=row.file_name, deadline=_iso(found.at), mode=record.mode,
                           note="the legal deadline to send this offline invoice to KSeF has passed; ksefd still "
                                "sends it as soon as KSeF takes it")
            await asyncio.to_thread(self.artefacts.update, record.stem, {"deadlineMissed": True})
        elif share >= 0.9 and record.warned < 90:
            await self.store.offline.mark(record.invoice_id, warned=90)
            self.log.warning("offline.deadline_near", file=row.file_name, deadline=_iso(found.at), gone="90%")
        elif 0.5 <= share < 0.9 and record.warned < 50:
            await self.store.offline.mark(record.invoice_id, warned=50)
            self.log.warning("offline.deadline_half", file=row.file_name, deadline=_iso(found.at), gone="50%")
