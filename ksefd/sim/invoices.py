"""Invoices received by the simulator and their asynchronous processing (PROTOCOL.md §4.2, §4.5,
§8.2-8.4): one API for online sessions (online.py), batch sessions (batch.py), the metadata query
and exports (receiving.py).

Records: store table `invoices`, keyed by the invoice reference number (EE); the exact bytes are the
blob `invoice/<ref>` (`invoice_bytes`). A record (JSON) holds:

    referenceNumber, sessionReferenceNumber, sessionType, ordinalNumber, contextType, contextValue
    invoiceHash, invoiceSize, invoiceFileName (batch), offlineMode (declared), invoicingMode (Online|Offline)
    invoicingDate, acquisitionDate, permanentStorageDate, ksefNumber   (ISO strings; None until known)
    status {code, description, details, extensions}
    hashOfCorrectedInvoice, correctedInvoiceReference (technical correction, §8.4), allowAttachments
    facts: None until parsed, then fa3.facts(): sellerNip, sellerName, buyer{identifier{type,value},name},
           thirdSubjects[], authorizedSubject, issueDate (P_1), invoiceNumber (P_2), rodzajFaktury,
           invoiceType, currency, netAmount, grossAmount, vatAmount, isSelfInvoicing, hasAttachment, formCode

Use:
    rec = await invoices.submit(world, session, xml_bytes, offline_mode=False, invoicing_date=now,
                                file_name="a.xml", allow_attachments=attachments_allowed(...))
        -> stores the record in status 100 and queues it; verdicts come in submission order
           (100 -> 150 -> 200 with a KSeF number, or 410/415/430/435/440/450). `plain=None` records a
           file that could not be decrypted (status 435; pass invoice_hash/invoice_size as declared).
    invoice_records.get(world, ref) / by_ksef_number / for_session / accepted / pending_count (the lookups
        live in invoice_records.py, below this module and sessions.py)
    invoices.invoice_metadata(rec) -> openapi.json InvoiceMetadata (status-200 records only)
    invoices.status_view(rec)       -> SessionInvoiceStatusResponse without the UPO link fields
    invoices.cancel(world, rec, 405) for a session error

Attachments (`Zalacznik`): the record gets 415 unless `allow_attachments` is True. Online sessions
pass True only for a technical correction when attachments are enabled for the NIP; batch sessions
pass the NIP's /testdata/attachment setting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import structlog

from . import fa3, ids, sessions, verification
from .clock import WARSAW, iso, parse_iso
from .errors import KsefException
from .invoice_records import (
    PENDING,
    TABLE,
    Index,
    b64_sha256,
    by_hash,
    duplicate_key,
    get,
    invoice_bytes,
    status,
)
from .invoice_records import (
    index as _index,
)
from .world import World

log = structlog.get_logger("ksefd.sim.invoices")

INSPECT_AHEAD = 31      # files checked ahead in one worker-thread hop (their verdicts still come one by one)


def resume(world: World) -> None:
    """After a restart (--state): requeue undecided invoices and finish sessions left closing."""
    index = _index(world)
    waiting = [r for r in world.store.values(TABLE) if r["status"]["code"] in PENDING]
    for rec in sorted(waiting, key=lambda r: (r["invoicingDate"], r["ordinalNumber"])):
        _enqueue(world, index, rec["referenceNumber"])
    for session in world.store.values(sessions.TABLE):
        if session.pop("finalizing", None):
            world.store.put(sessions.TABLE, session["referenceNumber"], session)
        sessions.maybe_finalize(world, session["referenceNumber"])


# views ----------------------------------------------------------------------------------------

def status_view(record: dict[str, Any]) -> dict[str, Any]:
    """openapi.json SessionInvoiceStatusResponse, without upoDownloadUrl (route modules add it)."""
    st = {k: v for k, v in record["status"].items() if v is not None}
    view: dict[str, Any] = {"ordinalNumber": record["ordinalNumber"], "referenceNumber": record["referenceNumber"],
                            "invoiceHash": record["invoiceHash"], "invoicingDate": record["invoicingDate"],
                            "status": st}
    if record["status"]["code"] == 200:
        # Real KSeF stops at the first error and then does not report P_2 (ksef-api issues #550, #828).
        view["invoiceNumber"] = record["facts"]["invoiceNumber"]
    for key in ("ksefNumber", "invoiceFileName", "acquisitionDate", "permanentStorageDate", "invoicingMode"):
        if record.get(key) is not None:
            view[key] = record[key]
    return view


def invoice_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """openapi.json InvoiceMetadata of an accepted (status 200) invoice."""
    facts = record["facts"]
    meta: dict[str, Any] = {
        "ksefNumber": record["ksefNumber"], "invoiceNumber": facts["invoiceNumber"], "issueDate": facts["issueDate"],
        "invoicingDate": record["invoicingDate"], "acquisitionDate": record["acquisitionDate"],
        "permanentStorageDate": record["permanentStorageDate"],
        "seller": {"nip": facts["sellerNip"], "name": facts["sellerName"]},
        "buyer": facts["buyer"],
        "netAmount": facts["netAmount"], "grossAmount": facts["grossAmount"], "vatAmount": facts["vatAmount"],
        "currency": facts["currency"], "invoicingMode": record["invoicingMode"], "invoiceType": facts["invoiceType"],
        "formCode": facts["formCode"], "isSelfInvoicing": facts["isSelfInvoicing"],
        "hasAttachment": facts["hasAttachment"], "invoiceHash": record["invoiceHash"],
    }
    if record.get("hashOfCorrectedInvoice"):   # omitted, not null: the $ref'd hash is not nullable for validators
        meta["hashOfCorrectedInvoice"] = record["hashOfCorrectedInvoice"]
    if facts["thirdSubjects"]:
        meta["thirdSubjects"] = facts["thirdSubjects"]
    if facts.get("authorizedSubject") and facts["authorizedSubject"].get("nip"):
        meta["authorizedSubject"] = facts["authorizedSubject"]
    return meta


# submission -----------------------------------------------------------------------------------

def check_technical_correction(world: World, session: dict[str, Any], hash_of_corrected: str) -> dict[str, Any]:
    """The original of a technical correction (PROTOCOL.md §8.4), or 400 21166/21167."""
    corrections = [r for r in world.store.values(TABLE)
                   if r.get("hashOfCorrectedInvoice") == hash_of_corrected and r["status"]["code"] == 200
                   and r["contextValue"] == session["contextValue"]]
    if corrections:
        raise KsefException(21166, ["Faktura posiada już przetworzoną prawidłowo korektę techniczną."])
    originals = [r for r in by_hash(world, hash_of_corrected) if r["contextValue"] == session["contextValue"]]
    if not originals:
        raise KsefException(21167, [f"Nie znaleziono faktury o skrócie {hash_of_corrected} w bieżącym kontekście; "
                                    "korekta techniczna dotyczy wyłącznie odrzuconych faktur offline."])
    if any(r["status"]["code"] == 200 for r in originals):
        raise KsefException(21167, ["Nie można wysłać korekty technicznej do prawidłowo przetworzonej faktury."])
    original = originals[-1]
    if original["status"]["code"] in PENDING:
        raise KsefException(21167, ["Faktura korygowana jest jeszcze przetwarzana."])
    if original["invoicingMode"] != "Offline" or original["status"]["code"] == 410:
        raise KsefException(21167, ["Korekta techniczna dotyczy wyłącznie faktur offline odrzuconych z przyczyn "
                                    "technicznych (nie z powodu braku uprawnień)."])
    return original


async def submit(world: World, session: dict[str, Any], plain: bytes | None, *, offline_mode: bool,
                 invoicing_date: dt.datetime, file_name: str | None = None, hash_of_corrected: str | None = None,
                 allow_attachments: bool = False, invoice_hash: str | None = None,
                 invoice_size: int | None = None) -> dict[str, Any]:
    """Store a new invoice of `session` in status 100 and queue it for its verdict (see module doc)."""
    index = _index(world)
    session["invoiceCount"] = int(session.get("invoiceCount", 0)) + 1
    sessions.touch(world, session)
    ref = ids.reference_number("EE", invoicing_date)
    record: dict[str, Any] = {
        "referenceNumber": ref, "sessionReferenceNumber": session["referenceNumber"],
        "sessionType": session["sessionType"], "ordinalNumber": session["invoiceCount"],
        "contextType": session["contextType"], "contextValue": session["contextValue"],
        "invoiceHash": b64_sha256(plain) if plain is not None else invoice_hash,
        "invoiceSize": len(plain) if plain is not None else invoice_size,
        "invoiceFileName": file_name, "offlineMode": offline_mode,
        "invoicingMode": "Offline" if offline_mode else "Online",
        "invoicingDate": iso(invoicing_date), "acquisitionDate": None, "permanentStorageDate": None,
        "ksefNumber": None, "status": status(100), "hashOfCorrectedInvoice": hash_of_corrected,
        "correctedInvoiceReference": None, "allowAttachments": allow_attachments,
        "decryptionFailed": plain is None, "facts": None,
    }
    if plain is not None:
        world.store.put_blob(f"invoice/{ref}", plain)
    world.store.put(TABLE, ref, record)
    index.add(record)
    _enqueue(world, index, ref)
    return record


def cancel(world: World, record: dict[str, Any], code: int = 405, details: list[str] | None = None) -> None:
    """End a still-pending invoice without a verdict (e.g. 405 when its batch session failed)."""
    if record["status"]["code"] in PENDING:
        _decided(world, record, status(code, details))


# the pipeline ---------------------------------------------------------------------------------

def _enqueue(world: World, index: Index, ref: str) -> None:
    index.queue.append((ref, time.monotonic()))
    index.wakeup.set()
    if index.worker is None or index.worker.done():
        index.worker = world.spawn(_worker(world, index))


async def _worker(world: World, index: Index) -> None:
    """One FIFO worker: verdicts follow submission order, so the first of two duplicates wins."""
    while True:
        if not index.queue:
            index.wakeup.clear()
            await index.wakeup.wait()
            continue
        ref, queued_at = index.queue.popleft()
        try:
            await _process(world, ref, queued_at)
        except Exception as exc:   # a bug must not stall the queue: report it as KSeF's 500
            log.exception("sim.invoice.failed", reference=ref)
            record = get(world, ref)
            if record is not None and record["status"]["code"] in PENDING:
                _decided(world, record, {"code": 500, "description": "Nieznany błąd (500)",
                                         "details": [type(exc).__name__], "extensions": None})


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _process(world: World, ref: str, queued_at: float) -> None:
    delay = world.config.processing_delay_s
    await _sleep_until(queued_at + delay)
    record = get(world, ref)
    if record is None or record["status"]["code"] not in PENDING:
        _index(world).inspected.pop(ref, None)
        return
    record["status"] = status(150)
    world.store.put(TABLE, ref, record)
    session = world.store.get(sessions.TABLE, record["sessionReferenceNumber"]) or {}
    verdict = await _judge(world, record, session)
    await _sleep_until(queued_at + 2 * delay)
    if verdict["code"] == 200:
        _accept(world, record)
        prepare = world.services.get("prepare_invoice_upo")     # sessions_query.register
        if prepare is not None and record["sessionType"] == "Online" and record["status"]["code"] == 200:
            # Right after, not before the verdict shows: a client sees its status exactly when it did before.
            asyncio.get_running_loop().call_soon(prepare, record)
    else:
        _decided(world, record, verdict)


def _decided(world: World, record: dict[str, Any], verdict: dict[str, Any]) -> None:
    index = _index(world)
    record["status"] = verdict
    world.store.put(TABLE, record["referenceNumber"], record)
    session_ref = record["sessionReferenceNumber"]
    index.pending[session_ref] = max(0, index.pending.get(session_ref, 0) - 1)
    session = world.store.get(sessions.TABLE, session_ref)
    if session is not None:
        sessions.touch(world, session)
    sessions.maybe_finalize(world, session_ref)


def _accept(world: World, record: dict[str, Any]) -> None:
    """Status 200: the KSeF number (its date = acceptance for processing), acquisitionDate, then a
    strictly later permanentStorageDate (openapi.json SessionInvoiceStatusResponse)."""
    index = _index(world)
    key = duplicate_key(record["facts"])
    if key in index.accepted:   # an earlier one won while this was being judged
        _decided(world, record, _duplicate_status(world, index.accepted[key]))
        return
    invoicing = parse_iso(record["invoicingDate"])
    acquired = max(world.clock.now(), invoicing)
    stored = max(acquired + dt.timedelta(milliseconds=1), index.last_storage + dt.timedelta(microseconds=1))
    record["ksefNumber"] = ids.ksef_number(record["facts"]["sellerNip"], invoicing)
    record["acquisitionDate"] = iso(acquired)
    record["permanentStorageDate"] = iso(stored)
    if record.get("hashOfCorrectedInvoice"):
        originals = by_hash(world, record["hashOfCorrectedInvoice"])
        record["correctedInvoiceReference"] = originals[-1]["referenceNumber"] if originals else None
    index.mark_accepted(record)
    _decided(world, record, status(200))


def _duplicate_status(world: World, original_ref: str) -> dict[str, Any]:
    original = get(world, original_ref) or {}
    ksef, session_ref = original.get("ksefNumber", ""), original.get("sessionReferenceNumber", "")
    return status(440, [f"Duplikat faktury. Faktura o numerze KSeF: {ksef} została już prawidłowo przesłana do "
                        f"systemu w sesji: {session_ref}"],
                  {"originalSessionReferenceNumber": session_ref, "originalKsefNumber": ksef})


def _inspect(plain: bytes, limits: dict[str, int]) -> verification.Rejection | dict[str, Any]:
    """Runs in a worker thread: technical checks, then the facts."""
    checked = verification.check_file(plain, max_size=limits["maxInvoiceSize"],
                                      max_size_with_attachment=limits["maxInvoiceWithAttachmentSize"])
    if isinstance(checked, verification.Rejection):
        return checked
    return {"facts": fa3.facts(checked.root), "nips": fa3.subject_nips(checked.root)}


def _inspect_each(work: list[tuple[bytes, dict[str, int]]]) -> list[Any]:
    """Runs in a worker thread: `_inspect` of each file, an exception standing in for its own file only."""
    answers: list[Any] = []
    for plain, limits in work:
        try:
            answers.append(_inspect(plain, limits))
        except Exception as exc:      # re-raised by _inspected for that invoice alone (a 500)
            answers.append(exc)
    return answers


def _limits(world: World, session: dict[str, Any]) -> dict[str, int]:
    return sessions.limits(world, session) if session else \
        sessions.limits(world, {"sessionType": "Online", "contextValue": ""})


def _due_next(world: World, index: Index) -> list[tuple[str, bytes, dict[str, int]]]:
    """Files queued right behind the one being judged, already due, for the same thread hop (at most
    INSPECT_AHEAD). Only the pure checks run early; every verdict is still reached in order, by _judge."""
    ahead: list[tuple[str, bytes, dict[str, int]]] = []
    due = time.monotonic() - world.config.processing_delay_s
    for ref, queued_at in index.queue:
        if len(ahead) >= INSPECT_AHEAD or queued_at > due:
            break
        record = get(world, ref)
        if record is None or record["status"]["code"] not in PENDING or record["decryptionFailed"] \
                or ref in index.inspected:
            continue
        session = world.store.get(sessions.TABLE, record["sessionReferenceNumber"]) or {}
        ahead.append((ref, invoice_bytes(world, record) or b"", _limits(world, session)))
    return ahead


async def _inspected(world: World, record: dict[str, Any], session: dict[str, Any]) -> Any:
    """`_inspect`'s answer for `record`: prepared by an earlier hop, or now, with the files due behind it
    (one thread hop per group instead of one per invoice: the hand-off cost as much as the checks)."""
    index = _index(world)
    ready = index.inspected.pop(record["referenceNumber"], None)
    if ready is None:
        ahead = _due_next(world, index)
        answers = await asyncio.to_thread(_inspect_each, [(invoice_bytes(world, record) or b"",
                                                           _limits(world, session)),
                                                          *((plain, limits) for _, plain, limits in ahead)])
        ready = answers[0]
        for (ref, _, _), answer in zip(ahead, answers[1:], strict=True):
            index.inspected[ref] = answer
    if isinstance(ready, Exception):
        raise ready
    return ready


def context_nip(context_type: str, context_value: str) -> str | None:
    """The NIP a context stands for: the NIP itself, or the NIP part of InternalId / NipVatUe."""
    if context_type == "Nip":
        return context_value
    if context_type in ("InternalId", "NipVatUe"):
        return context_value.split("-", 1)[0]
    return None


async def _judge(world: World, record: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    if record["decryptionFailed"]:
        return status(435, ["Nie udało się odszyfrować pliku faktury kluczem i wektorem IV sesji "
                            "(AES-256-CBC, PKCS#7, bez IV na początku szyfrogramu)."])
    inspected = await _inspected(world, record, session)
    if isinstance(inspected, verification.Rejection):
        return status(inspected.code, inspected.details)
    facts = inspected["facts"]
    record["facts"] = facts
    invoicing_day = parse_iso(record["invoicingDate"]).astimezone(WARSAW).date()
    issue_day = dt.date.fromisoformat(facts["issueDate"])
    # §8.3: Offline when declared, or when the P_1 day precedes the invoicing day (Warsaw time).
    record["invoicingMode"] = "Offline" if record["offlineMode"] or issue_day < invoicing_day else "Online"
    if facts["hasAttachment"] and not record["allowAttachments"]:
        return status(415, ["Faktury z załącznikiem można wysyłać wyłącznie w sesji wsadowej, po włączeniu "
                            "obsługi załączników dla podatnika."])
    seller_context = context_nip(record["contextType"], record["contextValue"])
    if facts["sellerNip"] != seller_context:
        return status(410, [f"Brak uprawnień do wystawienia faktury w imieniu podmiotu {facts['sellerNip']} "
                            f"(Podmiot1) w kontekście {record['contextType']} {record['contextValue']}."])
    if session.get("subjectIdentifierValidation"):
        for where, nip in inspected["nips"]:
            if not fa3.nip_checksum_ok(nip):
                return status(450, [f"Nieprawidłowa suma kontrolna numeru NIP {nip} ({where})."])
    if issue_day > invoicing_day:
        return status(450, [f"Data wystawienia faktury (P_1) {issue_day.isoformat()} jest późniejsza niż data "
                            f"przyjęcia faktury {invoicing_day.isoformat()}."])
    original = _index(world).accepted.get(duplicate_key(facts))
    if original is not None:
        return _duplicate_status(world, original)
    return status(200)
