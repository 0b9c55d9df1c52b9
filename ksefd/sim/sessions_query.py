"""Reading sessions: the session list, one session's status, its invoices (all / failed) with
continuation tokens, one invoice's status, and the UPOs: per invoice (by EE reference or KSeF number),
per session page, and their pre-signed download links under /storage/upo (PROTOCOL.md §4.4-4.6).

Visibility (openapi.json GET /sessions): InvoiceWrite sees the sessions its own subject opened,
Introspection/EnforcementOperations every session of the context; anything else is 21173.
UPO documents are generated on first download and kept (blob `upo/...`), so every download of one
UPO returns the same bytes and the same `x-ms-meta-hash`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from . import invoices, presigned, sessions, upo
from .clock import iso, parse_iso
from .errors import KsefException
from .security import Caller
from .spec import API_PREFIX
from .world import WORLD, World

UPO_TTL_S = 3 * 24 * 3600


# paging --------------------------------------------------------------------------------------

def page_size(request: web.Request) -> int:
    raw = request.query.get("pageSize", "10")
    try:
        size = int(raw)
    except ValueError:
        raise KsefException(21405, [f"pageSize: {raw!r} nie jest liczbą całkowitą."]) from None
    if not 10 <= size <= 1000:
        raise KsefException(21405, [f"pageSize: {size} jest poza zakresem 10..1000."])
    return size


def offset_from(request: web.Request, scope: str) -> int:
    """Decode `x-continuation-token` (ours: Base64 JSON {"s": scope, "o": offset}); 21418 if malformed."""
    token = request.headers.get("x-continuation-token")
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4)))
        offset = data["o"]
        if data["s"] != scope or not isinstance(offset, int) or offset < 0:
            raise ValueError("token of another listing")
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error):
        raise KsefException(21418, ["Przekazany token kontynuacji ma nieprawidłowy format."]) from None
    return offset


def token_for(scope: str, offset: int) -> str:
    raw = json.dumps({"s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def paged(request: web.Request, items: list[Any], scope: str) -> tuple[list[Any], str | None]:
    size, start = page_size(request), offset_from(request, scope)
    chunk = items[start:start + size]
    return chunk, token_for(scope, start + size) if start + size < len(items) else None


# sessions ------------------------------------------------------------------------------------

def find_session(world: World, caller: Caller, reference: str) -> dict[str, Any]:
    session = sessions.get(world, reference)
    if session is None or not sessions.visible_to(caller, session):
        raise KsefException(21173, [f"Sesja o numerze referencyjnym {reference} nie została znaleziona."])
    return session


def counts(world: World, reference: str) -> tuple[int, int, int]:
    records = invoices.for_session(world, reference)
    ok = sum(1 for r in records if r["status"]["code"] == 200)
    failed = sum(1 for r in records if r["status"]["code"] >= 400)
    return len(records), ok, failed


def _status(session: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session["status"].items() if v is not None}


def _page_url(world: World, request: web.Request, session: dict[str, Any], page: dict[str, Any]) -> dict[str, str]:
    url, expires = presigned.url(world, request, f"upo/{session['referenceNumber']}/session/"
                                                 f"{page['referenceNumber']}.xml", ttl_s=UPO_TTL_S)
    return {"referenceNumber": page["referenceNumber"], "downloadUrl": url, "downloadUrlExpirationDate": iso(expires)}


async def session_status(request: web.Request) -> web.Response:
    """GET /sessions/{ref} (SessionStatusResponse)."""
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    total, ok, failed = counts(world, session["referenceNumber"])
    body: dict[str, Any] = {"status": _status(session), "dateCreated": session["dateCreated"],
                            "dateUpdated": session["dateUpdated"], "invoiceCount": total,
                            "successfulInvoiceCount": ok, "failedInvoiceCount": failed}
    if session.get("validUntil"):
        body["validUntil"] = session["validUntil"]
    if session["status"]["code"] == 200 and session["upoPages"]:
        body["upo"] = {"pages": [_page_url(world, request, session, p) for p in session["upoPages"]]}
    return web.json_response(body)


def _date_filter(request: web.Request, name: str) -> Any:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise KsefException(21405, [f"{name}: {raw!r} nie jest poprawną datą ISO-8601."]) from None


def _matches(request: web.Request, session: dict[str, Any]) -> bool:
    for field, lower, upper in (("dateCreated", "dateCreatedFrom", "dateCreatedTo"),
                                ("dateClosed", "dateClosedFrom", "dateClosedTo"),
                                ("dateUpdated", "dateModifiedFrom", "dateModifiedTo")):
        low, high = _date_filter(request, lower), _date_filter(request, upper)
        if low is None and high is None:
            continue
        if not session.get(field):
            return False
        value = parse_iso(session[field])
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    wanted = request.query.getall("statuses", [])
    return not wanted or sessions.common_status(session["status"]["code"]) in wanted


async def list_sessions(request: web.Request) -> web.Response:
    """GET /sessions: filtered, newest first, paged with x-continuation-token."""
    world = request.app[WORLD]
    caller = world.caller(request)
    session_type = request.query.get("sessionType")
    if session_type not in ("Online", "Batch"):
        raise KsefException(21405, [f"sessionType: wymagana wartość Online lub Batch, otrzymano {session_type!r}."])
    for status in request.query.getall("statuses", []):
        if status not in ("InProgress", "Succeeded", "Failed", "Cancelled"):
            raise KsefException(21405, [f"statuses: nieznana wartość {status!r}."])
    reference = request.query.get("referenceNumber")
    found = []
    for session in world.store.values(sessions.TABLE):
        if session["sessionType"] != session_type or not sessions.visible_to(caller, session):
            continue
        if reference and session["referenceNumber"] != reference:
            continue
        sessions.expire_if_due(world, session)
        if _matches(request, session):
            found.append(session)
    found.sort(key=lambda s: (s["dateCreated"], s["referenceNumber"]), reverse=True)
    chunk, token = paged(request, found, f"sessions:{session_type}")
    items = []
    for session in chunk:
        total, ok, failed = counts(world, session["referenceNumber"])
        items.append({"referenceNumber": session["referenceNumber"], "status": _status(session),
                      "dateCreated": session["dateCreated"], "dateUpdated": session["dateUpdated"],
                      "validUntil": session.get("validUntil"), "totalInvoiceCount": total,
                      "successfulInvoiceCount": ok, "failedInvoiceCount": failed})
    body: dict[str, Any] = {"sessions": items}
    if token:
        body["continuationToken"] = token
    return web.json_response(body)


# invoices ------------------------------------------------------------------------------------

def invoice_view(world: World, request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    view = invoices.status_view(record)
    if record["status"]["code"] == 200:   # "Link generowany jest przy każdym odpytaniu o status"
        url, expires = presigned.url(world, request, f"upo/{record['sessionReferenceNumber']}/invoice/"
                                                     f"{record['referenceNumber']}.xml", ttl_s=UPO_TTL_S)
        view["upoDownloadUrl"], view["upoDownloadUrlExpirationDate"] = url, iso(expires)
    return view


async def _invoice_list(request: web.Request, failed_only: bool) -> web.Response:
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    records = invoices.for_session(world, session["referenceNumber"])
    if failed_only:
        records = [r for r in records if r["status"]["code"] >= 400]
    scope = f"invoices:{session['referenceNumber']}:{'failed' if failed_only else 'all'}"
    chunk, token = paged(request, records, scope)
    body: dict[str, Any] = {"invoices": [invoice_view(world, request, r) for r in chunk]}
    if token:
        body["continuationToken"] = token
    return web.json_response(body)


async def session_invoices(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices."""
    return await _invoice_list(request, failed_only=False)


async def failed_invoices(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/failed."""
    return await _invoice_list(request, failed_only=True)


def _session_invoice(world: World, session: dict[str, Any], reference: str) -> dict[str, Any] | None:
    record = invoices.get(world, reference)
    if record is None or record["sessionReferenceNumber"] != session["referenceNumber"]:
        return None
    return record


async def invoice_status(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/{invoiceRef}."""
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    reference = request.match_info["invoiceReferenceNumber"]
    record = _session_invoice(world, session, reference)
    if record is None:
        # [INFER] The spec lists only 21405 here; "not found" is a 400 with a code (§4.5), and 21164 says it.
        raise KsefException(21164, [f"Faktura o numerze referencyjnym {reference} nie została znaleziona w sesji "
                                    f"{session['referenceNumber']}."])
    return web.json_response(invoice_view(world, request, record))


# UPO documents -------------------------------------------------------------------------------

def _signer(world: World) -> upo.UpoSigner:
    signer: upo.UpoSigner | None = world.services.get("upo_signer")
    if signer is None:
        signer = upo.UpoSigner(world.store, world.clock.now())
        world.services["upo_signer"] = signer
    return signer


def _cached(world: World, key: str, build: Any) -> bytes:
    data = world.store.get_blob(key)
    if data is None:
        data = _signer(world).sign(build())
        world.store.put_blob(key, data)
    return data


def invoice_upo(world: World, record: dict[str, Any]) -> bytes | None:
    """The invoice's UPO, or None while it has no KSeF number (21178)."""
    session = world.store.get(sessions.TABLE, record["sessionReferenceNumber"])
    if record["status"]["code"] != 200 or session is None:
        return None
    return _cached(world, f"upo/invoice/{record['referenceNumber']}",
                   lambda: upo.build(environment=world.config.environment, session=session, invoices=[record]))


def page_upo(world: World, session: dict[str, Any], page_reference: str) -> bytes | None:
    page = next((p for p in session.get("upoPages", []) if p["referenceNumber"] == page_reference), None)
    if page is None or session["status"]["code"] != 200:
        return None
    records = [r for r in (invoices.get(world, ref) for ref in page["invoiceReferences"]) if r is not None]
    meta = upo.Page(page["number"], page["count"], page["first"], page["last"], page["total"])
    return _cached(world, f"upo/page/{page_reference}",
                   lambda: upo.build(environment=world.config.environment, session=session, invoices=records,
                                     page=meta))


def xml_response(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/xml", charset="utf-8",
                        headers={"x-ms-meta-hash": invoices.b64_sha256(data)})


def _no_upo(what: str, session_reference: str) -> KsefException:
    return KsefException(21178, [f"UPO {what} dla sesji {session_reference} nie zostało znalezione."])


async def invoice_upo_by_reference(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/{invoiceRef}/upo."""
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    reference = request.match_info["invoiceReferenceNumber"]
    record = _session_invoice(world, session, reference)
    data = invoice_upo(world, record) if record else None
    if data is None:
        raise _no_upo(f"faktury o numerze referencyjnym {reference}", session["referenceNumber"])
    return xml_response(data)


async def invoice_upo_by_ksef_number(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/ksef/{ksefNumber}/upo."""
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    number = request.match_info["ksefNumber"]
    record = invoices.by_ksef_number(world, number)
    if record is not None and record["sessionReferenceNumber"] != session["referenceNumber"]:
        record = None
    data = invoice_upo(world, record) if record else None
    if data is None:
        raise _no_upo(f"o numerze KSeF {number}", session["referenceNumber"])
    return xml_response(data)


async def session_upo(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/upo/{upoRef}."""
    world = request.app[WORLD]
    session = find_session(world, world.caller(request), request.match_info["referenceNumber"])
    page_reference = request.match_info["upoReferenceNumber"]
    data = page_upo(world, session, page_reference)
    if data is None:
        raise _no_upo(f"o numerze referencyjnym {page_reference}", session["referenceNumber"])
    return xml_response(data)


async def storage_upo(request: web.Request) -> web.Response:
    """GET /storage/upo/{session}/{invoice|session}/{ref}.xml: pre-signed, no bearer (PROTOCOL.md §4.6)."""
    world = request.app[WORLD]
    presigned.verify(world, request)
    session = world.store.get(sessions.TABLE, request.match_info["session"])
    kind, name = request.match_info["kind"], request.match_info["name"]
    data: bytes | None = None
    if session is not None and kind == "invoice":
        record = invoices.get(world, name)
        if record is not None and record["sessionReferenceNumber"] == session["referenceNumber"]:
            data = invoice_upo(world, record)
    elif session is not None and kind == "session":
        data = page_upo(world, session, name)
    if data is None:
        raise web.HTTPNotFound(text="The specified blob does not exist.")
    return xml_response(data)


def register(app: web.Application) -> None:
    base = f"{API_PREFIX}/sessions"
    app.router.add_get(base, list_sessions)
    app.router.add_get(f"{base}/{{referenceNumber}}", session_status)
    app.router.add_get(f"{base}/{{referenceNumber}}/invoices", session_invoices)
    app.router.add_get(f"{base}/{{referenceNumber}}/invoices/failed", failed_invoices)
    app.router.add_get(f"{base}/{{referenceNumber}}/invoices/ksef/{{ksefNumber}}/upo", invoice_upo_by_ksef_number)
    app.router.add_get(f"{base}/{{referenceNumber}}/invoices/{{invoiceReferenceNumber}}", invoice_status)
    app.router.add_get(f"{base}/{{referenceNumber}}/invoices/{{invoiceReferenceNumber}}/upo", invoice_upo_by_reference)
    app.router.add_get(f"{base}/{{referenceNumber}}/upo/{{upoReferenceNumber}}", session_upo)
    app.router.add_get(f"{presigned.PREFIX}upo/{{session}}/{{kind}}/{{name}}.xml", storage_upo)
