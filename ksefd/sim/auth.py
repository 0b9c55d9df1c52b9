"""Authentication endpoints (PROTOCOL.md §3): challenge, XAdES and KSeF-token starts, the operation's
status, redeem and refresh. Auth-session management lives in auth_sessions.py, the operation record and its
status machine in auth_ops.py, the signature checks in xades_verify.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from aiohttp import web

from . import auth_ops, auth_sessions, certificate_store, permissions, tokens
from .clock import epoch_ms, iso
from .errors import Forbidden, KsefException
from .ids import reference_number
from .security import bearer, client_ip
from .spec import API_PREFIX, check_parameters, json_body
from .store import Record
from .world import WORLD, World
from .xades_verify import CertificateIdentity, certificate_identity, is_self_signed, verify_auth_request

CHALLENGES = "auth_challenges"

# Context identifier formats (openapi.json Nip, InternalId, NipVatUe, PeppolId).
CONTEXT_PATTERNS = {
    "Nip": re.compile(r"[1-9]((\d[1-9])|([1-9]\d))\d{7}"),
    "InternalId": re.compile(r"[1-9]((\d[1-9])|([1-9]\d))\d{7}-\d{5}"),
    "NipVatUe": re.compile(r"[1-9]((\d[1-9])|([1-9]\d))\d{7}-[A-Z]{2}[A-Z0-9+*]{2,13}"),
    "PeppolId": re.compile(r"P[A-Z]{2}[0-9]{6}"),
}


async def challenge(request: web.Request) -> web.Response:
    """POST /auth/challenge: 10 minutes (SimConfig challenge_ttl_s), single use (PROTOCOL.md §3.1)."""
    world = request.app[WORLD]
    now = world.clock.now()
    value = reference_number("CR", now)
    record = {"challenge": value, "issuedAt": now.timestamp(), "timestampMs": epoch_ms(now),
              "clientIp": client_ip(request), "used": False}
    world.store.put(CHALLENGES, value, record)
    return web.json_response({"challenge": value, "timestamp": iso(now), "timestampMs": record["timestampMs"],
                              "clientIp": record["clientIp"]})


def _challenge_problem(world: World, value: str) -> tuple[Record | None, str | None]:
    """The challenge record and what is wrong with it (None when it may be used now)."""
    record = world.store.get(CHALLENGES, value)
    if record is None:
        return None, f"Wyzwanie {value} nie zostało wygenerowane przez KSeF."
    if record["used"]:
        return record, f"Wyzwanie {value} zostało już wykorzystane."
    if world.clock.now().timestamp() - record["issuedAt"] > world.config.challenge_ttl_s:
        return record, f"Wyzwanie {value} wygasło."
    return record, None


def _consume(world: World, record: Record) -> None:
    record["used"] = True
    world.store.put(CHALLENGES, record["challenge"], record)


def _init_response(world: World, op: Record) -> web.Response:
    return web.json_response({"referenceNumber": op["referenceNumber"],
                              "authenticationToken": auth_ops.operation_token(world, op)}, status=202)


async def xades_signature(request: web.Request) -> web.Response:
    """POST /auth/xades-signature (PROTOCOL.md §3.3); synchronous checks give 400s, the rest the status."""
    world = request.app[WORLD]
    check_parameters(request)            # verifyCertificateChain must be a boolean
    verify_chain = request.query.get("verifyCertificateChain", "false").strip().lower() == "true"
    raw = await request.read()
    signed = verify_auth_request(raw)
    record, problem = _challenge_problem(world, signed.challenge)
    if record is None or problem is not None:
        # Unlike the token path, XAdES has no 450 detail for a bad challenge: it is the documented 400 21111.
        raise KsefException(21111, [problem or ""])
    cert = signed.certificate
    issued = certificate_store.issued_record(world, cert)
    if issued is not None:
        # A KSeF certificate carries the identity of whoever requested it, fingerprint included (§9.3).
        owner = issued["subjectIdentifier"]
        identity = CertificateIdentity(owner["type"], owner["value"], False)
    else:
        identity = certificate_identity(cert, signed.subject_identifier_type)
    if signed.context_type == "PeppolId" and identity.type == "Pesel":
        # [INFER] a Peppol context belongs to a service provider, never to a natural person.
        raise KsefException(21117, ["Kontekst PeppolId nie może być użyty przez osobę fizyczną."])
    _consume(world, record)
    method = "InternalCertificate" if issued else "QualifiedSeal" if identity.is_seal else "QualifiedSignature"
    op = auth_ops.create(
        world, method=method, context={"type": signed.context_type, "value": signed.context_value},
        subject={"type": identity.type, "value": identity.value}, client_ip=client_ip(request),
        extra={"certificate": {"notBefore": cert.not_valid_before_utc.timestamp(),
                               "notAfter": cert.not_valid_after_utc.timestamp(),
                               "selfSigned": is_self_signed(cert), "verifyChain": verify_chain,
                               **certificate_store.login_facts(world, cert)},
               "allowedIps": signed.allowed_ips,
               # The UPO's SkrotDokumentuUwierzytelniajacego: SHA-256 of the document as received (§4.6).
               "documentHash": base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii")})
    return _init_response(world, op)


def _token_failure(world: World, body: dict[str, Any], challenge_record: Record) -> tuple[str | None, str | None]:
    """Decrypt `token|timestampMs`; returns (token reference, 450 detail). PROTOCOL.md §3.2: these failures
    are auth status 450, not HTTP errors."""
    try:
        ciphertext = base64.b64decode(body["encryptedToken"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KsefException(21405, ["encryptedToken: wartość nie jest poprawnym Base64."]) from exc
    try:
        plain = world.keys.decrypt("KsefTokenEncryption", body.get("publicKeyId"), ciphertext)
    except ValueError:
        return None, auth_ops.BAD_ENCRYPTION
    try:
        secret, _, stamp = plain.decode("utf-8").rpartition("|")
    except UnicodeDecodeError:
        return None, auth_ops.BAD_ENCODING
    if not secret:
        return None, auth_ops.BAD_ENCODING
    if stamp != str(challenge_record["timestampMs"]):
        return None, auth_ops.BAD_TOKEN_TIME
    found = tokens.find_by_secret(world, secret)
    if found is None:
        return None, auth_ops.BAD_TOKEN
    return found["referenceNumber"], None


async def ksef_token(request: web.Request) -> web.Response:
    """POST /auth/ksef-token (PROTOCOL.md §3.2)."""
    world = request.app[WORLD]
    body = await json_body(request)
    context = {"type": body["contextIdentifier"]["type"], "value": body["contextIdentifier"]["value"]}
    if not CONTEXT_PATTERNS[context["type"]].fullmatch(context["value"]):
        raise KsefException(21405, [f"contextIdentifier.value: {context['value']!r} nie jest poprawnym "
                                    f"identyfikatorem typu {context['type']}."])
    record, problem = _challenge_problem(world, body["challenge"])
    if record is None:
        # Decision: a challenge KSeF never issued is the documented 400 21111 (openapi.json 400 table of this
        # operation); one that was issued but is used or expired is status 450 "Nieprawidłowe wyzwanie
        # autoryzacyjne" (PROTOCOL.md §3.2 and the OA status table: token failures are not HTTP errors).
        raise KsefException(21111, [problem or ""])
    token_ref, failure = _token_failure(world, body, record)
    if problem is not None:
        failure = auth_ops.BAD_CHALLENGE
    else:
        _consume(world, record)
    subject = {"type": "Token", "value": ""}
    if token_ref is not None:
        subject = dict(world.store.get(tokens.TABLE, token_ref)["authorIdentifier"])   # type: ignore[index]
    op = auth_ops.create(world, method="Token", context=context, subject=subject, client_ip=client_ip(request),
                         failure=(450, failure) if failure else None,
                         extra={"ksefTokenRef": token_ref,
                                "allowedIps": (body.get("authorizationPolicy") or {}).get("allowedIps")})
    return _init_response(world, op)


def _operation_for(request: web.Request, ref: str | None = None) -> Record:
    """The operation behind the Bearer authenticationToken (OperationToken), settled."""
    world = request.app[WORLD]
    payload = world.tokens.verify(bearer(request), "OperationToken")
    check_parameters(request)            # a path referenceNumber must have 36 characters (21405)
    op = auth_ops.find(world, ref or payload["auth-ref"])
    if payload["auth-ref"] != op["referenceNumber"]:
        raise Forbidden("insufficient-resource-access", "Token uwierzytelniania dotyczy innej operacji.")
    return auth_ops.settle(world, op)


async def operation_status(request: web.Request) -> web.Response:
    """GET /auth/{referenceNumber} (PROTOCOL.md §3.4)."""
    op = _operation_for(request, request.match_info["referenceNumber"])
    return web.json_response(auth_ops.describe(op))


def _refuse_revoked_token(world: World, op: Record) -> None:
    if op.get("ksefTokenRef") and tokens.is_revoked(world, op["ksefTokenRef"]):
        raise KsefException(21301, ["Token KSeF został unieważniony."])


def _refuse_deceased(world: World, op: Record) -> None:
    subject = op["subject"]
    if permissions.is_deceased(world.store, subject["type"], subject["value"]):
        raise KsefException(21308)


async def redeem(request: web.Request) -> web.Response:
    """POST /auth/token/redeem: exactly once, only after status 200 (PROTOCOL.md §3.5)."""
    world = request.app[WORLD]
    op = _operation_for(request)
    ref = op["referenceNumber"]
    if op["redeemed"]:
        raise KsefException(21301, [f"Tokeny dla operacji uwierzytelniania {ref} zostały już pobrane."])
    if op["status"]["code"] == 470:
        raise KsefException(21308)
    if op["status"]["code"] != 200:
        raise KsefException(21301, [f"Status uwierzytelniania ({op['status']['code']}) nie pozwala na pobranie "
                                    "tokenów."])
    _refuse_revoked_token(world, op)
    _refuse_deceased(world, op)
    access = auth_ops.access_token(world, op)
    refresh = auth_ops.refresh_token(world, op)
    op["redeemed"] = True
    world.store.put(auth_ops.TABLE, ref, op)
    return web.json_response({"accessToken": access, "refreshToken": refresh})


async def refresh(request: web.Request) -> web.Response:
    """POST /auth/token/refresh: Bearer refreshToken, not rotated; permissions as they are now (§3.5)."""
    world = request.app[WORLD]
    payload = world.tokens.verify(bearer(request), "RefreshToken")
    op = auth_ops.find(world, payload["auth-ref"])
    if op["revoked"] or op["status"]["code"] != 200:
        raise KsefException(21301, [f"Status uwierzytelniania ({op['status']['code']}) nie pozwala na odświeżenie "
                                    "tokenu dostępowego."])
    _refuse_revoked_token(world, op)
    _refuse_deceased(world, op)
    access = auth_ops.access_token(world, op)
    op["lastRefresh"] = iso(world.clock.now())
    world.store.put(auth_ops.TABLE, op["referenceNumber"], op)
    return web.json_response({"accessToken": access})


def register(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/auth/challenge", challenge)
    app.router.add_post(f"{API_PREFIX}/auth/xades-signature", xades_signature)
    app.router.add_post(f"{API_PREFIX}/auth/ksef-token", ksef_token)
    app.router.add_post(f"{API_PREFIX}/auth/token/redeem", redeem)
    app.router.add_post(f"{API_PREFIX}/auth/token/refresh", refresh)
    auth_sessions.register(app)        # /auth/sessions before /auth/{referenceNumber}
    app.router.add_get(f"{API_PREFIX}/auth/{{referenceNumber}}", operation_status)
