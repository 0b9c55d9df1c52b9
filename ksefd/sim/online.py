"""Online (interactive) sessions: open, send an invoice, close (PROTOCOL.md §4.1-4.3, §8.2, §8.4, §14.3).

Open unwraps the session's AES-256 key (RSA-OAEP-SHA256, `SymmetricKeyEncryption`); a key that does
not decrypt to 32 bytes still gives 201, and the session sits in status 415 as on TEST (ksef-api
issues #179, #225). Send checks the encrypted and the plain size/hash pairs synchronously (21402,
21403), decrypts (AES-256-CBC, PKCS#7, the session IV, no IV prefix) and hands the bytes to
invoices.submit, which judges them asynchronously. Close gives 204 and status 170 until the
session UPO is ready (sessions.finalize).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from aiohttp import web

from . import aes, faults, invoice_records, invoices, sessions, spec
from .clock import iso
from .errors import KsefException
from .permissions import attachments_allowed
from .spec import API_PREFIX
from .world import WORLD, World

# openapi.json OpenOnlineSessionRequest.formCode: every listed combination, and which ones we serve.
FORM_CODES = {("FA (2)", "1-0E", "FA"), ("FA (3)", "1-0E", "FA"), ("PEF (3)", "2-1", "PEF"),
              ("PEF_KOR (3)", "2-1", "PEF"), ("FA_RR (1)", "1-1E", "FA_RR")}
SUPPORTED_FORM_CODES = {("FA (3)", "1-0E", "FA")}
FEATURE_SUBJECT_VALIDATION = "subject-identifier-validation"


def check_form_code(form: dict[str, str]) -> None:
    combination = (form["systemCode"], form["schemaVersion"], form["value"])
    if combination not in FORM_CODES:
        raise KsefException(21405, [f"formCode {combination} nie jest obsługiwany; dozwolone są m.in. "
                                    '{"systemCode": "FA (3)", "schemaVersion": "1-0E", "value": "FA"} '
                                    "(zwróć uwagę na spację w \"FA (3)\")."])
    if combination not in SUPPORTED_FORM_CODES:
        raise KsefException(21405, [f"Symulator ksefd obsługuje wyłącznie FA (3) 1-0E FA; schemat {combination} "
                                    "jest dostępny tylko w KSeF."])


def b64decode(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KsefException(21405, [f"{field}: wartość nie jest poprawnym Base64."]) from None


def features(request: web.Request) -> set[str]:
    """`X-KSeF-Feature` values (the header may repeat or carry a comma-separated list)."""
    found: set[str] = set()
    for header in request.headers.getall("X-KSeF-Feature", []):
        found.update(part.strip().lower() for part in header.split(",") if part.strip())
    return found


def unwrap_key(world: World, encryption: dict[str, Any]) -> dict[str, str] | None:
    """Session key and IV (Base64) or None when the key does not decrypt to 32 bytes (status 415).
    An unknown publicKeyId is 400 21470; an IV that is not 16 bytes is 400 21405."""
    iv = b64decode(encryption["initializationVector"], "encryption.initializationVector")
    if len(iv) != 16:
        raise KsefException(21405, [f"encryption.initializationVector: wektor IV ma {len(iv)} bajtów, "
                                    "wymagane jest 16 bajtów."])
    wrapped = b64decode(encryption["encryptedSymmetricKey"], "encryption.encryptedSymmetricKey")
    try:
        key = world.keys.decrypt("SymmetricKeyEncryption", encryption.get("publicKeyId"), wrapped)
    except ValueError:
        return None
    if len(key) != 32:
        return None
    return {"key": base64.b64encode(key).decode("ascii"), "iv": base64.b64encode(iv).decode("ascii")}


async def open_session(request: web.Request) -> web.Response:
    """POST /sessions/online (PROTOCOL.md §4.1)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await spec.json_body(request)
    check_form_code(body["formCode"])
    encryption = unwrap_key(world, body["encryption"])
    ttl_s = faults.session_ttl_s(world, world.config.online_session_ttl_s)   # fault switch session_ttl
    valid_until = iso(world.clock.now() + dt.timedelta(seconds=ttl_s))
    session = sessions.create(world, caller, session_type="Online", form_code=body["formCode"],
                              encryption=encryption, valid_until=valid_until,
                              subject_identifier_validation=FEATURE_SUBJECT_VALIDATION in features(request))
    return web.json_response({"referenceNumber": session["referenceNumber"], "validUntil": valid_until},
                             status=201)


def _check_pair(data: bytes, size: int, digest: str, what: str) -> None:
    if len(data) != size:
        raise KsefException(21402, [f"Długość treści nie zgadza się z rozmiarem pliku ({what}: zadeklarowano "
                                    f"{size} B, otrzymano {len(data)} B)."])
    if invoice_records.b64_sha256(data) != digest:
        raise KsefException(21403, [f"Skrót treści nie zgadza się ze skrótem pliku ({what}: SHA-256 w Base64)."])


def _decrypt(session: dict[str, Any], ciphertext: bytes) -> bytes | None:
    encryption = session["encryption"]
    try:
        return aes.decrypt(base64.b64decode(encryption["key"]), base64.b64decode(encryption["iv"]), ciphertext)
    except ValueError:
        return None


async def send_invoice(request: web.Request) -> web.Response:
    """POST /sessions/online/{ref}/invoices (PROTOCOL.md §4.2): 202 with the EE reference number."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await spec.json_body(request)
    session = sessions.find(world, caller, request.match_info["referenceNumber"], "Online", request=request)
    reference, code = session["referenceNumber"], session["status"]["code"]
    if code != 100 or session["closing"]:
        raise KsefException(21180, spec.documented_details(request, 21180, code))
    if faults.session_unavailable(world, reference):   # fault switch, PROTOCOL.md §14.3
        raise KsefException(21184, spec.documented_details(request, 21184, reference))
    limit = sessions.limits(world, session)["maxInvoices"]
    if session["invoiceCount"] >= limit:
        raise KsefException(21155, spec.documented_details(request, 21155, reference, limit))
    encrypted = b64decode(body["encryptedInvoiceContent"], "encryptedInvoiceContent")
    _check_pair(encrypted, body["encryptedInvoiceSize"], body["encryptedInvoiceHash"], "encryptedInvoice")
    plain = _decrypt(session, encrypted)
    if plain is not None:   # undecryptable content becomes invoice status 435
        _check_pair(plain, body["invoiceSize"], body["invoiceHash"], "invoice")
    offline = bool(body.get("offlineMode", False))
    corrected = body.get("hashOfCorrectedInvoice")
    allow_attachments = False
    if corrected:
        if not offline:
            raise KsefException(21405, ["hashOfCorrectedInvoice: korekta techniczna wymaga offlineMode=true "
                                        "(PROTOCOL.md §8.4)."])
        invoices.check_technical_correction(world, session, corrected)
        # An offline invoice's technical correction is the one online case that may carry Zalacznik.
        nip = invoices.context_nip(session["contextType"], session["contextValue"])
        allow_attachments = nip is not None and attachments_allowed(world.store, nip)
    record = await invoices.submit(world, session, plain, offline_mode=offline, invoicing_date=world.clock.now(),
                                   hash_of_corrected=corrected, allow_attachments=allow_attachments,
                                   invoice_hash=body["invoiceHash"], invoice_size=body["invoiceSize"])
    return web.json_response({"referenceNumber": record["referenceNumber"]}, status=202)


async def close_session(request: web.Request) -> web.Response:
    """POST /sessions/online/{ref}/close (PROTOCOL.md §4.3): 204, then 170 -> 200/440/445."""
    world = request.app[WORLD]
    caller = world.caller(request)
    session = sessions.find(world, caller, request.match_info["referenceNumber"], "Online", request=request)
    code = session["status"]["code"]
    if code != 100 or session["closing"]:
        raise KsefException(21180, spec.documented_details(request, 21180, code))
    sessions.begin_closing(world, session)
    return web.Response(status=204)


def register(app: web.Application) -> None:
    world = app[WORLD]
    app.router.add_post(f"{API_PREFIX}/sessions/online", open_session)
    app.router.add_post(f"{API_PREFIX}/sessions/online/{{referenceNumber}}/invoices", send_invoice)
    app.router.add_post(f"{API_PREFIX}/sessions/online/{{referenceNumber}}/close", close_session)

    async def resume(_: web.Application) -> None:
        invoices.resume(world)   # --state: pending invoices and closing sessions continue after a restart

    app.on_startup.append(resume)
