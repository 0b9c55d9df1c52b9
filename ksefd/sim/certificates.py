"""KSeF certificate endpoints (PROTOCOL.md §9.3, §15; openapi.json tag "Certyfikaty"):

    GET  /certificates/limits                    canRequest, enrollment and certificate limits of the subject
    GET  /certificates/enrollments/data          the DN to put in the CSR, copied from the login certificate
    POST /certificates/enrollments               CSR checks (certificate_csr.py), 202 with an EH reference
    GET  /certificates/enrollments/{ref}         100 -> 200 with the serial number | 400 | 500 | 550; 30 days
    POST /certificates/retrieve                  DER Base64 of up to 10 certificates
    POST /certificates/query                     paged list, newest request first
    POST /certificates/{serial}/revoke           204; not after a KSeF-token login
    PUT  /testdata/certificates/{serial}         TEST: shorten validTo
    POST/DELETE /testdata/limits/subject/certificate   TEST: the subject's limits
    POST /sim/certificates/outcomes              simulator control: {"next": [500, 550]} forces the verdicts
                                                 of the next enrollments (not part of KSeF)

The verdict of an enrollment is reached lazily, the first time somebody looks after `readyAt` (SimConfig
`certificate_enrollment_delay_s`), as auth operations do: deterministic under a ManualClock, restart-safe.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import auth_ops, certificate_csr, certificate_store
from .certificate_ca import new_serial, serial_hex
from .certificate_store import CERTIFICATES, CERTIFIED_KEYS, ENROLLMENTS, LIMIT_OVERRIDES
from .clock import iso, parse_iso
from .errors import Forbidden, Gone, KsefException
from .ids import reference_number
from .security import Caller
from .spec import API_PREFIX, json_body
from .store import Record
from .world import WORLD, World

RETENTION = dt.timedelta(days=30)          # openapi.json: the enrollment status is available for 30 days
PAST_TOLERANCE = dt.timedelta(minutes=5)   # validFrom a little in the past is a clock difference, not an error

# openapi.json CertificateEnrollmentStatusResponse.status table.
STATUS_TEXT = {100: "Wniosek przyjęty do realizacji", 200: "Wniosek obsłużony (certyfikat wygenerowany)",
               400: "Wniosek odrzucony", 500: "Nieznany błąd", 550: "Operacja została anulowana przez system"}
KEY_ALREADY_CERTIFIED = "Klucz publiczny został już certyfikowany przez inny podmiot."
CERTIFICATE_LIMIT = "Osiągnięto dopuszczalny limit posiadanych certyfikatów."
CANCELLED = "Przetwarzanie zostało przerwane z przyczyn wewnętrznych systemu. Spróbuj ponownie"
OUTCOMES = "certificate_outcomes"          # world.services: forced verdicts of the next enrollments


def _status(code: int, details: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "description": STATUS_TEXT[code]}
    if details:
        body["details"] = details
    return body


def _subject(caller: Caller) -> dict[str, str]:
    return {"type": caller.subject_type, "value": caller.subject_value}


async def _body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The JSON body; 21001 when it cannot be read at all (PROTOCOL.md §15), 21405 when it breaks the schema."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KsefException(21001, [f"Treść żądania nie jest poprawnym JSON w UTF-8: {exc}"]) from exc
    return await json_body(request)


def _login(world: World, caller: Caller) -> Record:
    op = world.store.get(auth_ops.TABLE, caller.auth_reference)
    assert op is not None               # World.caller checked it
    return op


def _limits(world: World, caller: Caller) -> dict[str, Any]:
    max_enrollments, max_certificates = certificate_store.subject_limits(world.store, caller.subject_type,
                                                                         caller.subject_value)
    made, active, pending = certificate_store.counts(world, caller.subject_type, caller.subject_value)
    enrollment = {"limit": max_enrollments, "remaining": max(0, max_enrollments - made)}
    certificate = {"limit": max_certificates, "remaining": max(0, max_certificates - active - pending)}
    return {"canRequest": enrollment["remaining"] > 0 and certificate["remaining"] > 0,
            "enrollment": enrollment, "certificate": certificate}


async def limits(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    settle_due(world)
    return web.json_response(_limits(world, world.caller(request)))


def _enrollment_subject(world: World, caller: Caller, code: int) -> dict[str, str]:
    """The DN of the login certificate; only a XAdES login has one (25001 / 25002 otherwise)."""
    certificate = _login(world, caller).get("certificate") or {}
    subject = certificate.get("subject")
    if caller.method != "XadesSignature" or not subject:
        raise KsefException(code, ["Wniosek certyfikacyjny wymaga uwierzytelnienia podpisem XAdES (kwalifikowanym "
                                   "podpisem, pieczęcią lub certyfikatem KSeF); uwierzytelnienie tokenem KSeF nie "
                                   "wystarcza."])
    missing = [name for name in ("commonName", "countryName") if name not in subject]
    if missing:
        # [INFER] CertificateEnrollmentDataResponse requires both; a login certificate without them gives no DN.
        raise KsefException(code, [f"Certyfikat użyty do uwierzytelnienia nie zawiera atrybutów {', '.join(missing)}; "
                                   "nie można z niego przygotować danych do wniosku."])
    return dict(subject)


async def enrollment_data(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    return web.json_response(_enrollment_subject(world, caller, 25001))


def _valid_from(world: World, body: dict[str, Any]) -> dt.datetime | None:
    text = body.get("validFrom")
    if text is None:
        return None
    when = parse_iso(str(text))
    if when < world.clock.now() - PAST_TOLERANCE:
        raise KsefException(21405, [f"validFrom: {text} leży w przeszłości; podaj datę bieżącą lub przyszłą albo "
                                    "pomiń pole (ważny od chwili wystawienia)."])
    return when


async def enroll(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    settle_due(world)
    caller = world.caller(request)
    body = await _body(request)
    expected = _enrollment_subject(world, caller, 25002)
    max_enrollments, max_certificates = certificate_store.subject_limits(world.store, caller.subject_type,
                                                                         caller.subject_value)
    made, active, pending = certificate_store.counts(world, caller.subject_type, caller.subject_value)
    if made >= max_enrollments:
        raise KsefException(25006, [f"Złożono już {made} z {max_enrollments} dozwolonych wniosków."])
    if active + pending >= max_certificates:
        raise KsefException(25007, [f"Aktywne certyfikaty i wnioski w toku: {active + pending} z "
                                    f"{max_certificates} dozwolonych."])
    accepted = certificate_csr.check_csr(str(body["csr"]), expected)
    valid_from = _valid_from(world, body)
    now = world.clock.now()
    ref = reference_number("EH", now)
    outcomes: list[int] = world.services.setdefault(OUTCOMES, [])
    record: Record = {
        "referenceNumber": ref, "requestDate": iso(now), "requestedAt": now.timestamp(),
        "readyAt": now.timestamp() + world.config.certificate_enrollment_delay_s,
        "subjectIdentifier": _subject(caller), "certificateName": body["certificateName"],
        "certificateType": body["certificateType"], "csr": base64.b64encode(accepted.der).decode("ascii"),
        "publicKeyHash": accepted.public_key_hash, "validFrom": iso(valid_from) if valid_from else None,
        "status": _status(100), "certificateSerialNumber": None, "forced": outcomes.pop(0) if outcomes else None,
    }
    world.store.put(ENROLLMENTS, ref, record)
    return web.json_response({"referenceNumber": ref, "timestamp": iso(now)}, status=202)


def _key_certified(world: World, key_hash: str) -> bool:
    if world.store.get(CERTIFIED_KEYS, key_hash) is not None:
        return True
    # A key some login certificate (a qualified one, say) already carries is certified too.
    return any((op.get("certificate") or {}).get("publicKeyHash") == key_hash
               for op in world.store.values(auth_ops.TABLE))


def _issue(world: World, record: Record) -> Record:
    ca = certificate_store.authority(world)
    csr = x509.load_der_x509_csr(base64.b64decode(record["csr"]))
    now = world.clock.now()
    start = parse_iso(record["validFrom"]) if record["validFrom"] else now
    serial = new_serial()
    while world.store.get(CERTIFICATES, serial_hex(serial)) is not None:
        serial = new_serial()
    cert = ca.issue(csr, record["certificateType"], serial, start, start + certificate_store.VALIDITY)
    common = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    issued: Record = {
        "certificateSerialNumber": serial_hex(serial), "name": record["certificateName"],
        "type": record["certificateType"], "commonName": str(common[0].value) if common else "",
        "subjectIdentifier": dict(record["subjectIdentifier"]), "validFrom": iso(start),
        "validTo": iso(start + certificate_store.VALIDITY), "requestDate": record["requestDate"],
        "requestedAt": record["requestedAt"], "lastUseDate": None, "revokedAt": None, "revocationReason": None,
        "der": cert.public_bytes(serialization.Encoding.DER).hex(), "enrollment": record["referenceNumber"],
    }
    world.store.put(CERTIFICATES, issued["certificateSerialNumber"], issued)
    world.store.put(CERTIFIED_KEYS, record["publicKeyHash"], {"serial": issued["certificateSerialNumber"]})
    return issued


def settle_due(world: World) -> None:
    """KSeF processes an enrollment whether or not anybody polls it: every due one is settled before a
    certificate handler looks (a client that lost the reference finds the certificate by query)."""
    now = world.clock.now().timestamp()
    for record in world.store.values(ENROLLMENTS):
        if record["status"]["code"] == 100 and now >= record["readyAt"]:
            settle(world, record)


def settle(world: World, record: Record) -> Record:
    """Reach the verdict of an enrollment still in 100 once it is due."""
    if record["status"]["code"] != 100 or world.clock.now().timestamp() < record["readyAt"]:
        return record
    subject = record["subjectIdentifier"]
    _, max_certificates = certificate_store.subject_limits(world.store, subject["type"], subject["value"])
    _, active, _ = certificate_store.counts(world, subject["type"], subject["value"])
    if record.get("forced") in (500, 550):
        code = int(record["forced"])
        record["status"] = _status(code, [CANCELLED] if code == 550 else None)
    elif _key_certified(world, record["publicKeyHash"]):
        record["status"] = _status(400, [KEY_ALREADY_CERTIFIED])
    elif active >= max_certificates:
        record["status"] = _status(400, [CERTIFICATE_LIMIT])
    else:
        record["certificateSerialNumber"] = _issue(world, record)["certificateSerialNumber"]
        record["status"] = _status(200)
    world.store.put(ENROLLMENTS, record["referenceNumber"], record)
    return record


async def enrollment_status(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    ref = request.match_info["referenceNumber"]
    record = world.store.get(ENROLLMENTS, ref)
    if record is None or not certificate_store.owned_by(world.store, record, caller.subject_type,
                                                        caller.subject_value):
        raise KsefException(25005, [f"Wniosek {ref} nie istnieje lub nie należy do uwierzytelnionego podmiotu."])
    if world.clock.now().timestamp() - record["requestedAt"] > RETENTION.total_seconds():
        raise Gone("Operacja wygasła i nie jest już dostępna.")
    record = settle(world, record)
    body: dict[str, Any] = {"requestDate": record["requestDate"], "status": record["status"]}
    if record["certificateSerialNumber"]:
        body["certificateSerialNumber"] = record["certificateSerialNumber"]
    return web.json_response(body)


def _own(world: World, caller: Caller, serial: str) -> Record | None:
    record = world.store.get(CERTIFICATES, serial)
    if record is None or not certificate_store.owned_by(world.store, record, caller.subject_type,
                                                        caller.subject_value):
        return None
    return record


async def retrieve(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    settle_due(world)
    caller = world.caller(request)
    body = await _body(request)
    found = []
    for serial in dict.fromkeys(body["certificateSerialNumbers"]):
        record = _own(world, caller, serial)
        if record is not None:
            found.append({"certificate": base64.b64encode(bytes.fromhex(record["der"])).decode("ascii"),
                          "certificateName": record["name"], "certificateSerialNumber": serial,
                          "certificateType": record["type"]})
    return web.json_response({"certificates": found})


def _list_item(world: World, record: Record) -> dict[str, Any]:
    item = {key: record[key] for key in ("certificateSerialNumber", "name", "type", "commonName",
                                         "subjectIdentifier", "validFrom", "validTo", "requestDate")}
    item["status"] = certificate_store.status(world, record)
    if record.get("lastUseDate"):
        item["lastUseDate"] = record["lastUseDate"]
    return item


def _matches(world: World, record: Record, filters: dict[str, Any]) -> bool:
    if filters.get("certificateSerialNumber") and record["certificateSerialNumber"] != filters[
            "certificateSerialNumber"]:
        return False
    if filters.get("name") and str(filters["name"]).casefold() not in record["name"].casefold():
        return False
    if filters.get("type") and record["type"] != filters["type"]:
        return False
    if filters.get("status") and certificate_store.status(world, record) != filters["status"]:
        return False
    return not (filters.get("expiresAfter") and parse_iso(record["validTo"]) <= parse_iso(filters["expiresAfter"]))


async def query(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    settle_due(world)
    caller = world.caller(request)
    filters = await _body(request, optional=True)
    size = int(request.query.get("pageSize", "10"))
    offset = int(request.query.get("pageOffset", "0"))
    found = [r for r in world.store.values(CERTIFICATES)
             if certificate_store.owned_by(world.store, r, caller.subject_type, caller.subject_value)
             and _matches(world, r, filters)]
    found.sort(key=lambda r: (r["requestedAt"], r["certificateSerialNumber"]), reverse=True)
    page = found[offset * size:(offset + 1) * size]
    return web.json_response({"certificates": [_list_item(world, r) for r in page],
                              "hasMore": len(found) > (offset + 1) * size})


async def revoke(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    if caller.method == "Token":
        # openapi.json: "Operacja nie jest dostępna dla podmiotu uwierzytelnionego tokenem KSeF"; no 400 code is
        # documented for it, the 403 reason auth-method-not-allowed is (PROTOCOL.md §10.1).
        raise Forbidden("auth-method-not-allowed", "Ta operacja nie jest dostępna dla użytej metody uwierzytelnienia.",
                        {"authenticationMethodCategory": "Token"})
    body = await _body(request, optional=True)
    serial = request.match_info["certificateSerialNumber"]
    record = _own(world, caller, serial)
    if record is None:
        raise KsefException(25008, [f"Certyfikat {serial} nie istnieje lub nie należy do uwierzytelnionego "
                                    "podmiotu."])
    if certificate_store.status(world, record) != "Active":
        raise KsefException(25009, [f"Certyfikat {serial} ma status {certificate_store.status(world, record)}."])
    record["revokedAt"] = iso(world.clock.now())
    record["revocationReason"] = body.get("revocationReason") or "Unspecified"
    world.store.put(CERTIFICATES, serial, record)
    return web.Response(status=204)


async def shorten_validity(request: web.Request) -> web.Response:
    """PUT /testdata/certificates/{serial}: a new validTo, never later than the current one (openapi.json)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await _body(request)
    serial = request.match_info["serialNumber"]
    record = _own(world, caller, serial)
    if record is None:
        raise KsefException(25008, [f"Certyfikat {serial} nie istnieje lub nie należy do uwierzytelnionego "
                                    "podmiotu."])
    new_end = parse_iso(str(body["validTo"]))
    if new_end > parse_iso(record["validTo"]):
        raise KsefException(21405, [f"validTo: nowa data ważności {body['validTo']} nie może być późniejsza niż "
                                    f"obecna ({record['validTo']})."])
    record["validTo"] = iso(new_end)
    world.store.put(CERTIFICATES, serial, record)
    return web.Response(status=200)


async def set_subject_limits(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await _body(request, optional=True)
    override = {"maxEnrollments": (body.get("enrollment") or {}).get("maxEnrollments"),
                "maxCertificates": (body.get("certificate") or {}).get("maxCertificates")}
    world.store.put(LIMIT_OVERRIDES, certificate_store.subject_key(_subject(caller)), override)
    return web.Response(status=200)


async def reset_subject_limits(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    world.store.delete(LIMIT_OVERRIDES, certificate_store.subject_key(_subject(caller)))
    return web.Response(status=200)


async def force_outcomes(request: web.Request) -> web.Response:
    """Simulator control: the verdicts (500 or 550) of the next enrollments, in order."""
    world = request.app[WORLD]
    body = await request.json()
    wanted = [int(code) for code in body.get("next", [])]
    if any(code not in (500, 550) for code in wanted):
        raise web.HTTPBadRequest(text='{"error": "only 500 and 550 can be forced"}', content_type="application/json")
    world.services.setdefault(OUTCOMES, []).extend(wanted)
    return web.json_response({"next": world.services[OUTCOMES]})


def register(app: web.Application) -> None:
    prefix = f"{API_PREFIX}/certificates"
    app.router.add_get(f"{prefix}/limits", limits)
    app.router.add_get(f"{prefix}/enrollments/data", enrollment_data)
    app.router.add_post(f"{prefix}/enrollments", enroll)
    app.router.add_get(f"{prefix}/enrollments/{{referenceNumber}}", enrollment_status)
    app.router.add_post(f"{prefix}/retrieve", retrieve)
    app.router.add_post(f"{prefix}/query", query)
    app.router.add_post(f"{prefix}/{{certificateSerialNumber}}/revoke", revoke)
    app.router.add_put(f"{API_PREFIX}/testdata/certificates/{{serialNumber}}", shorten_validity)
    app.router.add_post(f"{API_PREFIX}/testdata/limits/subject/certificate", set_subject_limits)
    app.router.add_delete(f"{API_PREFIX}/testdata/limits/subject/certificate", reset_subject_limits)
    app.router.add_post("/sim/certificates/outcomes", force_outcomes)
