"""Reading sessions: the session list, one session's status, its invoices (all / failed) with
continuation tokens, one invoice's status, and the UPOs: per invoice (by EE reference or KSeF number),
per session page, and their pre-signed download links under /storage/upo (PROTOCOL.md §4.4-4.6).

Visibility (openapi.json GET /sessions): InvoiceWrite sees the sessions its own subject opened,
Introspection/EnforcementOperations every session of the context; anything else is 21173.
UPO documents are generated on first download and kept (blob `upo/...`), so every download of one
UPO returns the same bytes and the same `x-ms-meta-hash`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import invoice_records, invoices, paging, presigned, sessions, spec, upo
from .clock import iso, parse_iso
from .errors import KsefException
from .spec import API_PREFIX
from .world import WORLD, World

UPO_TTL_S = 3 * 24 * 3600


# sessions ------------------------------------------------------------------------------------

def _session(request: web.Request) -> tuple[World, dict[str, Any]]:
    """The caller's session named by the path (21173 otherwise), after the checks of World.caller."""
    world = request.app[WORLD]
    caller = world.caller(request)
    return world, sessions.find(world, caller, request.match_info["referenceNumber"], request=request)


def counts(world: World, reference: str) -> tuple[int, int, int]:
    records = invoice_records.for_session(world, reference)
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
    world, session = _session(request)
    total, ok, failed = counts(world, session["referenceNumber"])
    body: dict[str, Any] = {"status": _status(session), "dateCreated": session["dateCreated"],
                            "dateUpdated": session["dateUpdated"], "invoiceCount": total,
                            "successfulInvoiceCount": ok, "failedInvoiceCount": failed}
    if session.get("validUntil"):
        body["validUntil"] = session["validUntil"]
    if session["status"]["code"] == 200 and session["upoPages"]:
        body["upo"] = {"pages": [_page_url(world, request, session, p) for p in session["upoPages"]]}
    return web.json_response(body)


# (field of the session record, lower bound parameter, upper bound parameter); bounds are inclusive.
DATE_FILTERS = (("dateCreated", "dateCreatedFrom", "dateCreatedTo"), ("dateClosed", "dateClosedFrom", "dateClosedTo"),
                ("dateUpdated", "dateModifiedFrom", "dateModifiedTo"))


def _matches(request: web.Request, session: dict[str, Any]) -> bool:
    """The GET /sessions filters (their formats were checked by World.caller against openapi.json)."""
    reference = request.query.get("referenceNumber")
    if reference and session["referenceNumber"] != reference:
        return False
    for field, lower, upper in DATE_FILTERS:
        low, high = (parse_iso(request.query[n]) if n in request.query else None for n in (lower, upper))
        if low is None and high is None:
            continue
        if not session.get(field):
            return False
        value = parse_iso(session[field])
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    wanted = request.query.getall("statuses", [])
    return not wanted or sessions.common_status(session["status"]["code"]) in wanted


def _list_item(world: World, session: dict[str, Any]) -> dict[str, Any]:
    """SessionsQueryResponseItem."""
    total, ok, failed = counts(world, session["referenceNumber"])
    item: dict[str, Any] = {"referenceNumber": session["referenceNumber"], "status": _status(session),
                            "dateCreated": session["dateCreated"], "dateUpdated": session["dateUpdated"],
                            "totalInvoiceCount": total, "successfulInvoiceCount": ok, "failedInvoiceCount": failed}
    if session.get("validUntil"):
        item["validUntil"] = session["validUntil"]
    return item


async def list_sessions(request: web.Request) -> web.Response:
    """GET /sessions: filtered, newest first (dateCreated desc), paged with x-continuation-token."""
    world = request.app[WORLD]
    caller = world.caller(request)
    session_type = request.query["sessionType"]          # required: World.caller checked it
    found = []
    for session in world.store.values(sessions.TABLE):
        if session["sessionType"] != session_type or not sessions.visible_to(caller, session):
            continue
        sessions.expire_if_due(world, session)
        if _matches(request, session):
            found.append(session)
    found.sort(key=lambda s: (s["dateCreated"], s["referenceNumber"]), reverse=True)
    chunk, token = paging.page(request, found, f"sessions:{session_type}")
    return web.json_response(paging.with_token({"sessions": [_list_item(world, s) for s in chunk]}, token))


# invoices ------------------------------------------------------------------------------------

def invoice_view(world: World, request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    view = invoices.status_view(record)
    if record["status"]["code"] == 200:   # "Link generowany jest przy każdym odpytaniu o status"
        url, expires = presigned.url(world, request, f"upo/{record['sessionReferenceNumber']}/invoice/"
                                                     f"{record['referenceNumber']}.xml", ttl_s=UPO_TTL_S)
        view["upoDownloadUrl"], view["upoDownloadUrlExpirationDate"] = url, iso(expires)
    return view


async def _invoice_list(request: web.Request, failed_only: bool) -> web.Response:
    world, session = _session(request)
    records = invoice_records.for_session(world, session["referenceNumber"])
    if failed_only:
        records = [r for r in records if r["status"]["code"] >= 400]
    scope = f"invoices:{session['referenceNumber']}:{'failed' if failed_only else 'all'}"
    chunk, token = paging.page(request, records, scope)
    return web.json_response(paging.with_token({"invoices": [invoice_view(world, request, r) for r in chunk]}, token))


async def session_invoices(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices."""
    return await _invoice_list(request, failed_only=False)


async def failed_invoices(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/failed."""
    return await _invoice_list(request, failed_only=True)


def _of_session(session: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """`record` if it is an invoice of `session`: another session's invoice does not exist here."""
    if session is None or record is None or record["sessionReferenceNumber"] != session["referenceNumber"]:
        return None
    return record


async def invoice_status(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/{invoiceRef}."""
    world, session = _session(request)
    reference = request.match_info["invoiceReferenceNumber"]
    record = _of_session(session, invoice_records.get(world, reference))
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


def invoice_upo(world: World, record: dict[str, Any] | None) -> bytes | None:
    """The invoice's UPO, or None while it has no KSeF number (21178)."""
    session = world.store.get(sessions.TABLE, record["sessionReferenceNumber"]) if record else None
    if record is None or record["status"]["code"] != 200 or session is None:
        return None
    return _cached(world, f"upo/invoice/{record['referenceNumber']}",
                   lambda: upo.build(environment=world.config.environment, session=session, invoices=[record]))


def page_upo(world: World, session: dict[str, Any], page_reference: str) -> bytes | None:
    page = next((p for p in session.get("upoPages", []) if p["referenceNumber"] == page_reference), None)
    if page is None or session["status"]["code"] != 200:
        return None
    records = [r for r in (invoice_records.get(world, ref) for ref in page["invoiceReferences"]) if r is not None]
    meta = upo.Page(page["number"], page["count"], page["first"], page["last"], page["total"])
    return _cached(world, f"upo/page/{page_reference}",
                   lambda: upo.build(environment=world.config.environment, session=session, invoices=records,
                                     page=meta))


def xml_response(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/xml", charset="utf-8",
                        headers={"x-ms-meta-hash": invoice_records.b64_sha256(data)})


def _upo_response(request: web.Request, data: bytes | None, key: str, session: dict[str, Any],
                  what: str) -> web.Response:
    """The UPO, or 21178 worded as the operation documents it (`key` then the session's reference)."""
    if data is None:
        raise KsefException(21178, spec.documented_details(request, 21178, key, session["referenceNumber"])
                            or [f"UPO {what} dla sesji {session['referenceNumber']} nie zostało znalezione."])
    return xml_response(data)


async def invoice_upo_by_reference(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/{invoiceRef}/upo."""
    world, session = _session(request)
    reference = request.match_info["invoiceReferenceNumber"]
    data = invoice_upo(world, _of_session(session, invoice_records.get(world, reference)))
    return _upo_response(request, data, reference, session, f"faktury o numerze referencyjnym {reference}")


async def invoice_upo_by_ksef_number(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/invoices/ksef/{ksefNumber}/upo."""
    world, session = _session(request)
    number = request.match_info["ksefNumber"]
    data = invoice_upo(world, _of_session(session, invoice_records.by_ksef_number(world, number)))
    return _upo_response(request, data, number, session, f"o numerze KSeF {number}")


async def session_upo(request: web.Request) -> web.Response:
    """GET /sessions/{ref}/upo/{upoRef}."""
    world, session = _session(request)
    page_reference = request.match_info["upoReferenceNumber"]
    return _upo_response(request, page_upo(world, session, page_reference), page_reference, session,
                         f"o numerze referencyjnym {page_reference}")


async def storage_upo(request: web.Request) -> web.Response:
    """GET /storage/upo/{session}/{invoice|session}/{ref}.xml: pre-signed, no bearer (PROTOCOL.md §4.6)."""
    world = request.app[WORLD]
    presigned.verify(world, request)
    session = world.store.get(sessions.TABLE, request.match_info["session"])
    kind, name = request.match_info["kind"], request.match_info["name"]
    data: bytes | None = None
    if kind == "invoice":
        data = invoice_upo(world, _of_session(session, invoice_records.get(world, name)))
    elif session is not None and kind == "session":
        data = page_upo(world, session, name)
    if data is None:
        raise web.HTTPNotFound(text="The specified blob does not exist.")
    return xml_response(data)


def register(app: web.Application) -> None:
    world = app[WORLD]
    # An online invoice's UPO is signed as soon as it is accepted (invoices.py calls this), not by the first GET:
    # its client asks for it right after the status, and signing (~1 ms, a third of the simulator's CPU per
    # online invoice) then sat on that round trip (issue #16). Batch UPOs stay lazy: thousands at once.
    world.services["prepare_invoice_upo"] = lambda record: invoice_upo(world, record)
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
