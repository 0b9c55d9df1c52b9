"""KSeF's verdict on one invoice, turned into files and state (PROTOCOL.md §4.5, §13.4, §13.5).

* 200: `sent/NAME.xml`, `NAME.ksef.json` (written before the ACCEPTED step, so a crash in between
  rewrites the same bytes), then the UPO (`NAME.upo.xml`, also kept in SQLite), then DONE;
* 440 duplicate: the original's hash decides (DESIGN.md "exactly once"). The same bytes mean this very
  invoice was accepted earlier (a send whose answer was lost, retried): success, with the original's KSeF
  number and UPO. Different bytes are a rejection that says which KSeF number holds the key;
* 405 / 500 / 550 ("cancelled, send again"): queued again after a backoff;
* any other code (410, 415, 430, 435, 450): `rejected/NAME.xml` + `NAME.error.json` with KSeF's words.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ksefd import spool, spool_group
from ksefd.config import Company
from ksefd.i18n import N_, _
from ksefd.ksef import KsefError, KsefException, SessionInvoice, qr
from ksefd.store import Change, InvoiceRow, InvoiceState, OfflineInvoice, SessionRow

from ..connection import CompanyConnection
from ..failures import next_attempt
from .files import OutboxFiles
from .ledger import Ledger
from .offline_files import OfflineFiles

S = InvoiceState
SEND_AGAIN = frozenset({405, 500, 550})
NO_SUCH_SESSION = 21173     # the original's session cannot be read at all: nothing to compare with
# Threads writing a group's result files. Two, not four: they mostly make system calls, each a hand-off of the
# GIL, and on two cores four only contended for it (1 000 backlog, 6 alternating runs each, load 1.0-1.7: median
# 1.45 against 1.55 ms per invoice, wall 2.58-2.84 against 2.71-3.00 s; one writer cost wall time).
WRITERS = 2
# Message ids: NAME.error.json carries them in the config's language (error_text.localize).
KSEF_HINTS: dict[int, str] = {
    410: N_("The credentials ksefd uses may not issue invoices for this seller (Podmiot1). Grant the permission "
            "in KSeF, or drop the invoice into the outbox of the seller's company."),
    415: N_("Invoices with attachments (Zalacznik) need attachments enabled for the taxpayer in e-Urząd Skarbowy; "
            "ksefd sends them in batch sessions only. Enable it, or remove the attachment, and drop the file "
            "again."),
    430: N_("KSeF found the file invalid (schema, encoding or size). Correct it in the ERP and drop it again."),
    435: N_("KSeF could not decrypt the file. This is not a problem with the invoice; report it to ksefd's "
            "maintainers with the log, then drop the file again."),
    440: N_("KSeF already holds an invoice with this seller NIP, invoice type and number (P_2). If this is a "
            "correction, issue a correcting invoice (KOR) with its own number; otherwise give it a new number."),
    450: N_("KSeF refused the content (semantic check). Correct the fields named in the details and drop it "
            "again."),
}
OTHER_HINT = N_("Correct the invoice as KSeF's description (ksefStatus) says, then drop it into the outbox again.")


@dataclass(frozen=True)
class Accepted:
    """An ACCEPTED invoice and where its UPO is: its session (for a resolved 440, the original's)."""

    row: InvoiceRow
    session_reference: str
    upo_url: str | None
    upo_saved: bool = False     # its UPO is written and kept already (accept_many with `upos`): only `finish` left


def _unlink_temps(done: list[Any]) -> None:
    """The temps staged by `Outcomes._write_accepted`'s items so far (an error stops the group)."""
    for item in done:
        if item is not None:
            for staged in item[3]:
                staged.temp.unlink(missing_ok=True)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Outcomes:
    def __init__(self, company: Company, ledger: Ledger, files: OutboxFiles, connection: CompanyConnection,
                 log: Any) -> None:
        self.company = company
        self.ledger = ledger
        self.files = files
        self.connection = connection
        self.log = log
        self._listings: dict[str, dict[str, SessionInvoice]] = {}   # original session -> ksefNumber -> invoice
        self.offline_files: OfflineFiles | None = None    # set by the worker: offline invoices' artefacts

    def forget_listings(self) -> None:
        self._listings.clear()

    async def apply(self, row: InvoiceRow, invoice: SessionInvoice, session: SessionRow) -> Accepted | None:
        """Act on a final status; returns the ACCEPTED invoice (its UPO still to fetch) or None."""
        code = invoice.status.code
        if code == 200:
            accepted = await self.accept(row, invoice, session.reference, session.kind)
            return None if accepted is None else Accepted(accepted, session.reference, invoice.upo_download_url)
        if code == 440:
            return await self.duplicate(row, invoice, session)
        if code in SEND_AGAIN:
            await self.send_again(row, invoice)
            return None
        await self.reject(row, invoice, session.reference)
        return None

    # --- accepted -------------------------------------------------------------------------------

    def ksef_record(self, row: InvoiceRow, invoice: SessionInvoice, session_reference: str, kind: str,
                    extra: dict[str, Any] | None = None, *, qr_host: str | None = None) -> dict[str, Any]:
        link = None
        if row.seller_nip and row.issue_date:
            link = qr.invoice_link(qr_host or self.connection.qr_host, row.seller_nip, row.issue_date, row.sha256)
        return {
            "file": row.file_name, "ksefNumber": invoice.ksef_number, "invoiceNumber": row.invoice_number,
            "invoiceType": row.invoice_type, "sellerNip": row.seller_nip,
            "issueDate": row.issue_date.isoformat() if row.issue_date else None,
            "invoiceHash": row.sha256, "invoiceSize": row.size,
            "invoiceReferenceNumber": invoice.reference_number, "sessionReferenceNumber": session_reference,
            "sessionType": kind, "invoicingMode": invoice.invoicing_mode,
            "invoicingDate": _iso(invoice.invoicing_date), "acquisitionDate": _iso(invoice.acquisition_date),
            "permanentStorageDate": _iso(invoice.permanent_storage_date),
            "verificationLink": link, "environment": self.company.environment, **(extra or {}),
        }

    async def accept(self, row: InvoiceRow, invoice: SessionInvoice, session_reference: str, kind: str,
                     extra: dict[str, Any] | None = None) -> InvoiceRow | None:
        data = self.files.read_work(row)
        if data is None:
            self.log.error("outbox.work_file_missing", invoice=row.id, file=row.file_name, path=row.work_path)
            return None
        stem = self.files.write_sent(row.file_name, data, row=row, sync=False)   # sent/ fsynced once, below
        record = await self.ledger.store.offline.get(row.id) if row.offline else None
        more = self.offline_accepted(row, record, stem, invoice) if row.offline else {}
        self.files.write_ksef_json(stem, self.ksef_record(row, invoice, session_reference, kind,
                                                          {**(extra or {}), **more}))
        accepted = await self.ledger.move(
            row, S.ACCEPTED, from_state=S.PROCESSING, show={"ksefNumber": invoice.ksef_number},
            ksef_number=invoice.ksef_number, result_name=stem, status_code=200,
            detail={"ksefNumber": invoice.ksef_number, "session": session_reference})
        self.log.info("outbox.accepted", file=row.file_name, invoice=row.id, ksef_number=invoice.ksef_number,
                      sent_as=stem)
        return accepted

    async def accept_many(self, items: list[tuple[InvoiceRow, SessionInvoice]], session: SessionRow,
                          upos: dict[int, bytes] | None = None) -> list[Accepted]:
        """`accept` for a group of one session's invoices (a batch): every file written (temp + fsync + rename),
        the sent/ directory fsynced once, then all of them ACCEPTED in one commit. A crash before the commit
        leaves them PROCESSING, and the next round rewrites the same bytes onto the same stems.

        `upos` (invoice id -> UPO fetched already): each one's NAME.upo.xml is written with its other result
        files, in the same flushes (3 syncfs for the group instead of 5, issue #16), and kept in SQLite right
        after the ACCEPTED commit; those come back `upo_saved`, for the caller to `finish`. Durability (DESIGN.md,
        "An outbox invoice's life"; PROTOCOL.md §4.5): fetching a UPO is a read of what KSeF holds, sends
        nothing, and may be repeated, so it needs no step persisted before it. A UPO on disk is KSeF's own
        confirmation of the KSeF number NAME.ksef.json already holds, so having it before the ACCEPTED commit
        says nothing the database will not: a crash or power cut before the commit leaves the invoice
        PROCESSING (never sent again: exactly once), the next round asks KSeF again and finds the same files
        (a UPO there is kept as it is). The files are durable before any commit names them (spool_group)."""
        offline = [row.id for row, _ in items if row.offline]
        records = {r.invoice_id: r for r in await self.ledger.store.offline.of_company(self.company.name, offline)} \
            if offline else {}
        written = await asyncio.to_thread(self._write_accepted, items, session, records, upos or {})
        if not written:
            return []
        rows = await self.ledger.move_each([
            Change(row.id, {"ksef_number": invoice.ksef_number, "result_name": stem, "status_code": 200},
                   {"ksefNumber": invoice.ksef_number, "session": session.reference})
            for row, invoice, stem, _ in written], S.PROCESSING, S.ACCEPTED, known=[w[0] for w in written])
        for row in rows:
            self.log.info("outbox.accepted", file=row.file_name, invoice=row.id, ksef_number=row.ksef_number,
                              sent_as=row.result_name)
        saved = [(row.session_id, row.ksef_number, xml, row.id)
                 for row, (*_, xml) in zip(rows, written, strict=True) if xml is not None]
        if saved:
            await self.ledger.store.sessions.save_upos(saved)   # type: ignore[arg-type]   # set by ACCEPTED
        # No state file rewrite here: the group's UPOs follow at once and its state files are then removed;
        # an invoice whose UPO cannot be fetched gets its ACCEPTED state file then (batch.BatchRunner).
        return [Accepted(row, session.reference, invoice.upo_download_url, upo_saved=xml is not None)
                for row, (_, invoice, _, xml) in zip(rows, written, strict=True)]

    def _write_accepted(self, items: list[tuple[InvoiceRow, SessionInvoice]], session: SessionRow,
                        records: dict[int, OfflineInvoice], upos: dict[int, bytes]
                        ) -> list[tuple[InvoiceRow, SessionInvoice, str, bytes | None]]:
        # A few flushes for the group, not ~2 fsyncs per invoice (spool_group): the working copies' bytes made
        # durable at once, each linked into sent/ (no fsync of its own), the NAME.ksef.json (and NAME.upo.xml)
        # temps made durable at once and put in place, then the names (spool_group.place). Where the platform
        # cannot flush a file system, each working copy is fsynced as it is linked, as before.
        # the working copies (ksefd's own folder)
        synced = spool_group.worth_flushing(len(items)) and spool_group.flush([self.files.work_dir])
        work_dir, qr_host = self.files.work_dir_name, self.connection.qr_host     # once for the group
        Written = tuple[InvoiceRow, SessionInvoice, str, list[spool_group.Staged], bytes | None]

        def one(item: tuple[InvoiceRow, SessionInvoice]) -> Written | None:
            row, invoice = item
            data = self.files.read_work(row)
            if data is None:
                self.log.error("outbox.work_file_missing", invoice=row.id, file=row.file_name, path=row.work_path)
                return None
            mine = synced and os.path.dirname(row.work_path or "") == work_dir     # strings: per invoice
            stem = self.files.write_sent(row.file_name, data, sync=False, row=row, source_synced=mine)
            more = self.offline_accepted(row, records.get(row.id), stem, invoice) if row.offline else None
            staged = [self.files.stage_ksef_json(stem, self.ksef_record(row, invoice, session.reference,
                                                                        session.kind, more, qr_host=qr_host))]
            xml = upos.get(row.id)
            if xml is not None:
                there = self.files.read_sent(stem, ".upo.xml")     # written before a crash: kept as it is
                if there is None:
                    staged.append(spool_group.stage(self.files.folders.sent / f"{stem}.upo.xml", xml, replace=False))
                xml = there or xml
            return row, invoice, stem, staged, xml

        def some(chunk: list[tuple[InvoiceRow, SessionInvoice]]) -> list[Written | None]:
            done: list[Written | None] = []
            try:
                for item in chunk:
                    done.append(one(item))
            except BaseException:       # this chunk's temps are not left behind
                _unlink_temps(done)
                raise
            return done

        # A few writers at once: the links and temps are system calls that overlap. A slice of the group each,
        # not a task per invoice (a future, a lock and a wake-up each: ~5 % of a backlog's CPU, issue #16).
        # Two invoices reusing one name cannot clobber each other: write_unique creates with link(), and
        # retries a taken stem.
        size = -(-len(items) // WRITERS)
        with ThreadPoolExecutor(WRITERS) as pool:
            futures = [pool.submit(some, items[start:start + size]) for start in range(0, len(items), size)]
        try:
            written = [w for f in futures for w in f.result() if w is not None]
        except BaseException:       # one failed: the others' temps are not left behind
            for future in futures:
                if future.exception() is None:
                    _unlink_temps(future.result())
            raise
        spool_group.place([staged for *_, group, _ in written for staged in group])
        return [(row, invoice, stem, xml) for row, invoice, stem, _, xml in written]

    def offline_accepted(self, row: InvoiceRow, record: OfflineInvoice | None, stem: str,
                         invoice: SessionInvoice) -> dict[str, Any]:
        """An offline invoice got its KSeF number: KOD I for reprints labelled with the number (sent/STEM.kod1.*),
        the offline JSON told, and, for a technical correction, the original's error JSON linked to it
        (PROTOCOL.md §8.4, §8.5). Returns what NAME.ksef.json adds."""
        more: dict[str, Any] = {"offlineMode": True}
        if self.offline_files is None or record is None or not row.seller_nip or not row.issue_date:
            return more
        link = qr.invoice_link(self.offline_files.qr_host, row.seller_nip, row.issue_date, row.sha256)
        assert invoice.ksef_number is not None
        more["kod1"] = self.offline_files.write_reprint(stem, link, invoice.ksef_number)
        offline_json = self.offline_files.json_path(record.stem)
        more["offline"] = {"mode": record.mode, "reason": record.reason, "issuedAt": record.issued_at.isoformat(),
                           "deadline": _iso(record.deadline), "deadlineMissed": record.missed or (
                               record.deadline is not None and invoice.acquisition_date is not None
                               and invoice.acquisition_date >= record.deadline),
                           "kod2": record.kod2, "json": str(offline_json)}
        self.offline_files.update(record.stem, {"ksefNumber": invoice.ksef_number, "invoicingMode":
                                                invoice.invoicing_mode, "sent": f"{stem}.ksef.json",
                                                "kod1WithKsefNumber": more["kod1"]})
        if record.corrects_id is not None:
            more["technicalCorrectionOf"] = self._link_original(record, row, stem, invoice)
        return more

    def _link_original(self, record: OfflineInvoice, row: InvoiceRow, stem: str,
                       invoice: SessionInvoice) -> dict[str, Any]:
        """The original's rejected/NAME.error.json names its correction; returns the link for the correction."""
        link: dict[str, Any] = {"invoiceHash": record.corrects_hash}
        original = self.company.folders.rejected
        for path in sorted(original.glob("*.error.json")):
            try:
                body = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(body, dict) and body.get("invoiceHash") == record.corrects_hash:
                link.update(file=body.get("file"), rejected=str(path))
                body["technicalCorrection"] = {"file": row.file_name, "invoiceHash": row.sha256,
                                               "ksefNumber": invoice.ksef_number,
                                               "sent": str(self.company.folders.sent / f"{stem}.ksef.json")}
                spool.write_json(path, body)
                break
        return link

    async def save_upos(self, items: list[tuple[InvoiceRow, bytes]]) -> None:
        """`save_upo` for a group: the files (one directory fsync), then SQLite (one commit)."""
        def write_all() -> None:    # the temps, one flush, each linked into place, one flush (spool_group)
            staged = []
            for row, xml in items:
                assert row.result_name is not None
                one = self.files.stage_upo(row.result_name, xml)
                if one is not None:
                    staged.append(one)
            spool_group.place(staged)

        if not items:
            return
        await asyncio.to_thread(write_all)
        upos = []
        for row, xml in items:
            assert row.session_id is not None and row.ksef_number is not None
            upos.append((row.session_id, row.ksef_number, xml, row.id))
        await self.ledger.store.sessions.save_upos(upos)

    async def fetch_upo(self, row: InvoiceRow, session_reference: str, url: str | None,
                        ksef_number: str | None = None) -> bytes:
        """`ksef_number`: the invoice's, where the row does not hold it yet (before its ACCEPTED step)."""
        sessions = self.connection.context.sessions
        if url:
            try:
                return await sessions.download_presigned_upo(url)
            except KsefError as exc:    # the link expired or storage failed: the API endpoint still has it
                self.log.info("outbox.upo_link_failed", file=row.file_name, invoice=row.id, error=str(exc))
        number = ksef_number or row.ksef_number
        assert number is not None
        return await sessions.invoice_upo_by_ksef_number(session_reference, number)

    def upo_session(self, row: InvoiceRow, fallback: str) -> str:
        """Where an ACCEPTED invoice's UPO is, after a restart: the session its NAME.ksef.json names."""
        if row.result_name:
            try:
                record = json.loads((self.company.folders.sent / f"{row.result_name}.ksef.json").read_bytes())
                return str(record.get("sessionReferenceNumber") or fallback)
            except (OSError, ValueError):
                pass
        return fallback

    async def save_upo(self, row: InvoiceRow, xml: bytes) -> None:
        assert row.result_name is not None and row.session_id is not None and row.ksef_number is not None
        self.files.write_upo(row.result_name, xml)
        await self.ledger.store.sessions.save_upo(row.session_id, row.ksef_number, xml, invoice_id=row.id)

    async def finish(self, rows: list[InvoiceRow]) -> None:
        """ACCEPTED (UPO written) -> UPO_SAVED -> DONE, in two commits whatever the number of invoices."""
        await self.ledger.finish(rows)

    # --- 440 --------------------------------------------------------------------------------------

    async def duplicate(self, row: InvoiceRow, invoice: SessionInvoice, session: SessionRow) -> Accepted | None:
        extensions = invoice.status.extensions or {}
        number = extensions.get("originalKsefNumber")
        original_session = extensions.get("originalSessionReferenceNumber")
        original = await self._original(number, original_session) if number and original_session else None
        if original is not None and original.invoice_hash == row.sha256 and original_session:
            # The same bytes: this invoice was accepted by an earlier send (PROTOCOL.md §13.5).
            self.log.info("outbox.duplicate_is_same_document", file=row.file_name, invoice=row.id, ksef_number=number,
                              original_session=original_session)
            moved = await self.ledger.update(
                row, session_id=await self._session_id(original_session, session),
                invoice_ref=original.reference_number,
                detail={"duplicateOf": number, "sameHash": True, "duplicateReference": invoice.reference_number})
            accepted = await self.accept(moved, original, original_session, session.kind, {
                "resolvedDuplicate": {"invoiceReferenceNumber": invoice.reference_number,
                                      "sessionReferenceNumber": session.reference,
                                      "note": _("a repeated send of these exact bytes; KSeF kept the first")}})
            return None if accepted is None else Accepted(accepted, original_session, original.upo_download_url)
        if original is None:
            why = _("KSeF says it already holds this seller's invoice {number} as KSeF number {ksef_number} "
                    "(session {session}); ksefd could not read that original to compare it",
                    number=repr(row.invoice_number), ksef_number=str(number), session=str(original_session))
        else:
            why = _("KSeF already holds this seller's invoice {number} as KSeF number {ksef_number} with different "
                    "content (hash {hash}, this file {this_hash}); this file was not accepted",
                    number=repr(row.invoice_number), ksef_number=str(number), hash=str(original.invoice_hash),
                    this_hash=row.sha256)
        await self.reject(row, invoice, session.reference, message=why)
        return None

    async def _original(self, number: str, session_reference: str) -> SessionInvoice | None:
        listing = self._listings.get(session_reference)
        if listing is None or number not in listing:
            try:
                found = await self.connection.context.sessions.invoices(session_reference, page_size=1000)
            except KsefException as exc:
                if NO_SUCH_SESSION not in exc.codes:
                    raise
                self.log.warning("outbox.original_unreadable", session=session_reference, error=str(exc))
                return None
            except KsefError as exc:
                # A passing failure (timeout, 5xx, 429) decides nothing: the invoice stays PROCESSING and its
                # 440 is looked at again, never turned into a rejection of what may be these very bytes.
                self.log.warning("outbox.original_unreadable_for_now", session=session_reference, error=str(exc))
                raise
            listing = {i.ksef_number: i for i in found if i.ksef_number}
            self._listings[session_reference] = listing
        return listing.get(number)

    async def _session_id(self, reference: str, fallback: SessionRow) -> int:
        known = await self.ledger.store.sessions.by_reference(reference)
        return known.id if known is not None else fallback.id

    # --- rejected or cancelled --------------------------------------------------------------------

    async def reject(self, row: InvoiceRow, invoice: SessionInvoice, session_reference: str,
                     message: str | None = None) -> None:
        code = invoice.status.code
        # ksefd's sentence in the config's language; KSeF's own words stay as sent, under ksefStatus.
        said = message or _("KSeF rejected the invoice (code {code}): {description}", code=str(code),
                            description=str(invoice.status.description))
        error = {"stage": "ksef", "code": f"ksef-{code}", "message": said,
                 "details": list(invoice.status.details or []), "hint": KSEF_HINTS.get(code, OTHER_HINT),
                 "ksefStatus": {"code": code, "description": invoice.status.description,
                                "details": list(invoice.status.details or []),
                                "extensions": invoice.status.extensions},
                 "file": row.file_name, "invoiceHash": row.sha256,
                 "invoiceReferenceNumber": invoice.reference_number, "sessionReferenceNumber": session_reference}
        await self.ledger.reject(row, error, status_code=code, from_state=S.PROCESSING)

    async def send_again(self, row: InvoiceRow, invoice: SessionInvoice) -> None:
        attempts = row.attempts + 1
        when = next_attempt(self.ledger.now(), self.company.sending, attempts)
        error = {"stage": "ksef", "code": f"ksef-{invoice.status.code}", "message": _(
                     "KSeF cancelled the processing of the invoice ({code}: {description}); ksefd sends it again "
                     "by itself.", code=str(invoice.status.code), description=str(invoice.status.description)),
                 "details": list(invoice.status.details or [])}
        await self.ledger.move(row, S.QUEUED, from_state=S.PROCESSING, attempts=attempts, next_attempt_at=when,
                               last_error=error, invoice_ref=None, detail=error)
        self.log.info("outbox.send_again", file=row.file_name, invoice=row.id, code=invoice.status.code,
                      at=when.isoformat())
