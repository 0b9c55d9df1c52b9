"""Session records shared by online (online.py) and batch (batch.py) sessions, and their ending:
status codes, visibility, limits, closing and the session UPO pages (PROTOCOL.md §4.1-4.4, §5).

Store table `sessions`, keyed by the SO/SB reference number. A record (JSON) holds:

    referenceNumber, sessionType ("Online" | "Batch"), contextType, contextValue,
    openedBy {type, value}            the authenticating subject (InvoiceWrite sees only its own sessions)
    authReference, authentication     {ksefTokenReference} or {documentHash} for the UPO's Uwierzytelnienie
    formCode {systemCode, schemaVersion, value}, structureName (UPO NazwaStrukturyLogicznej)
    status {code, description, details}, dateCreated, dateUpdated, validUntil (None for batch), dateClosed
    encryption {key, iv} (Base64) or None when the key could not be unwrapped (status 415)
    offlineMode (batch: applies to every invoice), subjectIdentifierValidation (X-KSeF-Feature, §14.3)
    invoiceCount                      ordinals handed out so far (invoices.submit increments it)
    closing                           True once closed: finalize() runs when no invoice is pending
    upoPages [{referenceNumber, number, count, first, last, total, invoiceReferences[]}]

How the batch engineer ends a session: set its status to 150 via `set_status`, submit every invoice
with `invoices.submit(...)`, then call `begin_closing(world, session)`; the session becomes 200 with
UPO pages (or 445 when no invoice was accepted) as soon as the last invoice has its verdict.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from aiohttp import web

from . import faults, ids, invoice_records, spec, upo
from .clock import iso, parse_iso
from .errors import KsefException
from .security import Caller
from .world import World

TABLE = "sessions"
KEY_ERROR = "Rozszyfrowania klucza symetrycznego zakończone błędem"   # TEST's 415 detail (ksef-api #225)

ONLINE_STATUS = {100: "Sesja interaktywna otwarta", 170: "Sesja interaktywna zamknięta",
                 200: "Sesja interaktywna przetworzona pomyślnie", 415: "Błąd odszyfrowania dostarczonego klucza",
                 440: "Sesja anulowana", 445: "Błąd weryfikacji, brak poprawnych faktur"}
BATCH_STATUS = {100: "Sesja wsadowa rozpoczęta", 150: "Trwa przetwarzanie",
                200: "Sesja wsadowa przetworzona pomyślnie",
                405: "Błąd weryfikacji poprawności dostarczonych elementów paczki",
                415: "Błąd odszyfrowania dostarczonego klucza", 420: "Przekroczony limit faktur w sesji",
                430: "Błąd dekompresji pierwotnego archiwum", 435: "Błąd odszyfrowania zaszyfrowanych części archiwum",
                440: "Sesja anulowana", 445: "Błąd weryfikacji, brak poprawnych faktur"}

# Defaults of GET /limits/context (PROTOCOL.md §4.2, §5); `context_limits` records override them.
_SESSION_DEFAULTS = {"maxInvoices": 10_000, "maxInvoiceSizeInMB": 1, "maxInvoiceWithAttachmentSizeInMB": 3}
DEFAULT_LIMITS = {"onlineSession": _SESSION_DEFAULTS, "batchSession": _SESSION_DEFAULTS}


def describe(session_type: str, code: int) -> str:
    table = ONLINE_STATUS if session_type == "Online" else BATCH_STATUS
    return table.get(code, f"Nieznany błąd ({code})")


def create(world: World, caller: Caller, *, session_type: str, form_code: dict[str, str],
           encryption: dict[str, str] | None, valid_until: str | None, offline_mode: bool = False,
           subject_identifier_validation: bool = False) -> dict[str, Any]:
    """Create and store a session record in status 100 (or 415 when `encryption` is None)."""
    now = world.clock.now()
    ref = ids.reference_number("SO" if session_type == "Online" else "SB", now)
    code = 100 if encryption is not None else 415
    record: dict[str, Any] = {
        "referenceNumber": ref, "sessionType": session_type,
        "contextType": caller.context_type, "contextValue": caller.context_value,
        "openedBy": {"type": caller.subject_type, "value": caller.subject_value},
        "authReference": caller.auth_reference, "authentication": authentication_proof(world, caller),
        "formCode": dict(form_code), "structureName": "Schemat_FA(3)_v1-0E.xsd",
        "status": {"code": code, "description": describe(session_type, code),
                   "details": None if encryption is not None else [KEY_ERROR]},
        "dateCreated": iso(now), "dateUpdated": iso(now), "validUntil": valid_until, "dateClosed": None,
        "encryption": encryption, "offlineMode": offline_mode,
        "subjectIdentifierValidation": subject_identifier_validation,
        "invoiceCount": 0, "closing": False, "upoPages": [],
    }
    world.store.put(TABLE, ref, record)
    return record


def authentication_proof(world: World, caller: Caller) -> dict[str, str]:
    """What the UPO's Uwierzytelnienie names: the KSeF token's reference, or the SHA-256 (Base64) of
    the signed AuthTokenRequest as the auth operation recorded it (PROTOCOL.md §4.6)."""
    if caller.ksef_token_reference:
        return {"ksefTokenReference": caller.ksef_token_reference}
    operation = world.store.get("auth_operations", caller.auth_reference) or {}
    if operation.get("documentHash"):       # auth.py keeps it for XAdES logins
        return {"documentHash": str(operation["documentHash"])}
    if operation.get("ksefTokenRef"):
        return {"ksefTokenReference": str(operation["ksefTokenRef"])}
    # [INFER] An operation without either (none today): name the operation itself, so the UPO stays valid.
    digest = hashlib.sha256(caller.auth_reference.encode("ascii")).digest()
    return {"documentHash": base64.b64encode(digest).decode("ascii")}


def get(world: World, reference: str) -> dict[str, Any] | None:
    """The session record, after applying the 12-hour auto-close of online sessions (§4.1)."""
    record = world.store.get(TABLE, reference)
    if record is not None:
        expire_if_due(world, record)
    return record


def find(world: World, caller: Caller, reference: str, session_type: str | None = None, *,
         request: web.Request | None = None) -> dict[str, Any]:
    """The session if the caller may see it (and it is of `session_type`), or 400 21173. Sessions of other
    contexts, of other types and, for InvoiceWrite alone, of other subjects do not exist for the caller.
    With `request`, the detail is worded as that operation's 400 table in openapi.json words it (send and close
    say "odnaleziona", the reads "znaleziona")."""
    session = get(world, reference)
    if session is None or (session_type and session["sessionType"] != session_type) \
            or not visible_to(caller, session):
        documented = spec.documented_details(request, 21173, reference) if request is not None else None
        raise KsefException(21173, documented or [f"Sesja o numerze referencyjnym {reference} nie została "
                                                  "znaleziona."])
    return session


def visible_to(caller: Caller, session: dict[str, Any]) -> bool:
    """Same context; with only InvoiceWrite/PefInvoiceWrite, also the same authenticating subject
    (openapi.json GET /sessions: Introspection/EnforcementOperations see every session of the context)."""
    if (session["contextType"], session["contextValue"]) != (caller.context_type, caller.context_value):
        return False
    if caller.permissions & {"Introspection", "EnforcementOperations"}:
        return True
    opener = session.get("openedBy") or {}
    return (opener.get("type"), opener.get("value")) == (caller.subject_type, caller.subject_value)


def limits(world: World, session: dict[str, Any]) -> dict[str, int]:
    """maxInvoices and byte limits for this session's type and context (`context_limits` table)."""
    group = "onlineSession" if session["sessionType"] == "Online" else "batchSession"
    merged = dict(DEFAULT_LIMITS[group])
    override = (world.store.get("context_limits", session["contextValue"]) or {}).get(group) or {}
    merged.update({k: v for k, v in override.items() if isinstance(v, int | float)})
    return {"maxInvoices": int(merged["maxInvoices"]),
            "maxInvoiceSize": int(merged["maxInvoiceSizeInMB"] * 1_000_000),
            "maxInvoiceWithAttachmentSize": int(merged["maxInvoiceWithAttachmentSizeInMB"] * 1_000_000)}


def set_status(world: World, session: dict[str, Any], code: int, details: list[str] | None = None) -> None:
    session["status"] = {"code": code, "description": describe(session["sessionType"], code), "details": details}
    touch(world, session)


def touch(world: World, session: dict[str, Any]) -> None:
    session["dateUpdated"] = iso(world.clock.now())
    world.store.put(TABLE, session["referenceNumber"], session)


def expire_if_due(world: World, session: dict[str, Any]) -> None:
    """An open online session past validUntil is closed automatically (PROTOCOL.md §4.1)."""
    until = session.get("validUntil")
    if session["status"]["code"] == 100 and not session["closing"] and until \
            and world.clock.now() >= parse_iso(until):
        begin_closing(world, session)
    # A batch session not closed within its upload window (batch.py) is cancelled (PROTOCOL.md §5).
    deadline = session.get("uploadDeadline")
    if session["status"]["code"] == 100 and not session["closing"] and deadline \
            and world.clock.now() >= parse_iso(deadline):
        set_status(world, session, 440, ["Przekroczono czas wysyłki"])


def begin_closing(world: World, session: dict[str, Any]) -> None:
    """Mark the session closed (online: 170) and finish it once its invoices have their verdicts."""
    session["closing"] = True
    session["dateClosed"] = iso(world.clock.now())
    if session["sessionType"] == "Online":
        set_status(world, session, 170)
    else:
        touch(world, session)
    maybe_finalize(world, session["referenceNumber"])


def maybe_finalize(world: World, reference: str) -> None:
    """Called after every verdict and at closing: finish a closing session with nothing pending."""
    session = world.store.get(TABLE, reference)
    if session is None or not session["closing"] or session["status"]["code"] not in (100, 150, 170):
        return
    if invoice_records.pending_count(world, reference) == 0 and not session.get("finalizing"):
        session["finalizing"] = True
        world.store.put(TABLE, reference, session)
        world.spawn(_finalize_later(world, reference))


async def _finalize_later(world: World, reference: str) -> None:
    # Generating the collective UPO takes a moment on KSeF; the 170 status stays observable meanwhile.
    await asyncio.sleep(world.config.processing_delay_s)
    await faults.delay_upo(world)     # fault switch upo_delay (slow UPO generation)
    finalize(world, reference)


def finalize(world: World, reference: str) -> None:
    """Final status: 440 (no invoices), 445 (none accepted) or 200 with UPO pages of the accepted ones."""
    session = world.store.get(TABLE, reference)
    if session is None:
        return
    session.pop("finalizing", None)
    records = invoice_records.for_session(world, reference)
    accepted = [r["referenceNumber"] for r in records if r["status"]["code"] == 200]
    if not records:
        set_status(world, session, 440, ["Nie przesłano faktur"])
    elif not accepted:
        set_status(world, session, 445)
    else:
        now = world.clock.now()
        session["upoPages"] = [
            {"referenceNumber": ids.reference_number("EU", now), "number": p.number, "count": p.count,
             "first": p.first, "last": p.last, "total": p.total, "invoiceReferences": accepted[p.first - 1:p.last]}
            for p in upo.pages(len(accepted), world.config.upo_page_size)]
        set_status(world, session, 200)


def common_status(code: int) -> str:
    """openapi.json CommonSessionStatus of a session status code (GET /sessions `statuses` filter)."""
    if code in (100, 150, 170):
        return "InProgress"
    if code == 200:
        return "Succeeded"
    if code == 440:
        return "Cancelled"
    return "Failed"
