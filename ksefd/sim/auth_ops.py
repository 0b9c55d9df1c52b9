"""Authentication operations (AU reference numbers) in the store table `auth_operations`: their status
machine (PROTOCOL.md §3.4: 100 -> 200 | 415 | 425 | 450 | 460 | 470 | 480), and the tokens they issue
(§3.5). `world.caller` looks the operation up by the access token's `auth-ref` claim.

The verdict is reached lazily, the first time somebody looks after `readyAt` (SimConfig
`auth_processing_delay_s`, 0 by default): deterministic under a ManualClock and restart-safe with --state.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from . import certificate_store, permissions, tokens
from .clock import iso
from .errors import Gone, KsefException
from .ids import reference_number
from .store import Record
from .world import World

TABLE = "auth_operations"
RETENTION = dt.timedelta(days=7)          # PROTOCOL.md §3.4, CHG 2.4.0: then 410 Gone

# openapi.json AuthenticationOperationStatusResponse.status table.
DESCRIPTIONS = {
    100: "Uwierzytelnianie w toku",
    200: "Uwierzytelnianie zakończone sukcesem",
    415: "Uwierzytelnianie zakończone niepowodzeniem",
    425: "Uwierzytelnienie unieważnione",
    450: "Uwierzytelnianie zakończone niepowodzeniem z powodu błędnego tokenu",
    460: "Uwierzytelnianie zakończone niepowodzeniem z powodu błędu certyfikatu",
    470: "Uwierzytelnianie zakończone niepowodzeniem",
    480: "Uwierzytelnienie zablokowane",
    500: "Nieznany błąd",
}
NO_PERMISSIONS = "Brak przypisanych uprawnień"
REVOKED_BY_USER = "Uwierzytelnienie i powiązane refresh tokeny zostały unieważnione przez użytkownika"
DECEASED = "Próba wykorzystania metod autoryzacyjnych osoby zmarłej"
BLOCKED = ("Podejrzenie incydentu bezpieczeństwa. Skontaktuj się z Ministerstwem Finansów przez formularz "
           "zgłoszeniowy.")
# 450 details (PROTOCOL.md §3.4).
BAD_CHALLENGE = "Nieprawidłowe wyzwanie autoryzacyjne"
BAD_TOKEN = "Nieprawidłowy token"
BAD_TOKEN_TIME = "Nieprawidłowy czas tokena"
TOKEN_REVOKED = "Token unieważniony"
TOKEN_INACTIVE = "Token nieaktywny"
BAD_ENCRYPTION = "Nieprawidłowe szyfrowanie tokena"
BAD_ENCODING = "Nieprawidłowe kodowanie tokena"
# 460 details.
CERT_INVALID = "Nieważny certyfikat"
CHAIN_ERROR = "Błąd weryfikacji łańcucha certyfikatów"
CHAIN_UNTRUSTED = "Niezaufany łańcuch certyfikatów"

METHOD_INFO = {
    "Token": ("Token", {"category": "Token", "code": "token.ksef", "displayName": "Token KSeF"}),
    "QualifiedSignature": ("QualifiedSignature", {"category": "XadesSignature", "code": "xades.qualified-signature",
                                                  "displayName": "Podpis kwalifikowany"}),
    "QualifiedSeal": ("QualifiedSeal", {"category": "XadesSignature", "code": "xades.qualified-seal",
                                        "displayName": "Pieczęć kwalifikowana"}),
    # [INFER] code: the spec gives no codes; the legacy enum names a KSeF certificate InternalCertificate.
    "InternalCertificate": ("InternalCertificate", {"category": "XadesSignature", "code": "xades.ksef-certificate",
                                                    "displayName": "Certyfikat KSeF"}),
}


def status(code: int, details: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "description": DESCRIPTIONS[code]}
    if details:
        body["details"] = details
    return body


def create(world: World, *, method: str, context: dict[str, str], subject: dict[str, str],
           client_ip: str, failure: tuple[int, str] | None = None, extra: dict[str, Any] | None = None) -> Record:
    """Start an operation (status 100). `method` is a METHOD_INFO key; `failure` is a verdict already known."""
    now = world.clock.now()
    ref = reference_number("AU", now)
    op: Record = {
        "referenceNumber": ref, "startDate": iso(now), "startedAt": now.timestamp(),
        "readyAt": now.timestamp() + world.config.auth_processing_delay_s,
        "method": method, "context": dict(context), "subject": dict(subject), "clientIp": client_ip,
        "status": status(100), "failure": list(failure) if failure else None,
        "redeemed": False, "refreshValidUntil": None, "lastRefresh": None, "revoked": False, **(extra or {}),
    }
    world.store.put(TABLE, ref, op)
    return op


def operation_token(world: World, op: Record) -> dict[str, str]:
    token, exp = world.tokens.issue("OperationToken", dt.timedelta(seconds=world.config.authentication_token_ttl_s),
                                    {"auth-ref": op["referenceNumber"], **_context_claims(op)})
    return {"token": token, "validUntil": iso(exp)}


def find(world: World, ref: str) -> Record:
    op = world.store.get(TABLE, ref)
    if op is None:
        raise KsefException(21304, [f"Operacja uwierzytelniania o numerze referencyjnym {ref} nie została "
                                    "znaleziona."])
    if world.clock.now().timestamp() - op["startedAt"] > RETENTION.total_seconds():
        raise Gone("Operacja wygasła i nie jest już dostępna.")
    return op


def settle(world: World, op: Record) -> Record:
    """Reach the verdict of an operation still in 100 once it is due."""
    if op["status"]["code"] != 100 or world.clock.now().timestamp() < op["readyAt"]:
        return op
    code, detail = _verdict(world, op)
    op["status"] = status(code, [detail] if detail else None)
    if code == 200 and op.get("ksefTokenRef"):
        tokens.mark_used(world, op["ksefTokenRef"])
    if code == 200 and (op.get("certificate") or {}).get("ksefSerial"):
        certificate_store.mark_used(world, op["certificate"]["ksefSerial"])
    world.store.put(TABLE, op["referenceNumber"], op)
    return op


def _verdict(world: World, op: Record) -> tuple[int, str | None]:
    if op["failure"]:
        return int(op["failure"][0]), str(op["failure"][1])
    now = world.clock.now().timestamp()
    cert = op.get("certificate")
    if cert is not None and cert.get("ksefSerial"):
        # A KSeF certificate: KSeF's own record decides (revoked, validTo shortened on TEST, Offline type), and
        # its chain is KSeF's own, so verifyCertificateChain has nothing to refuse (PROTOCOL.md §3.3, §9.3).
        problem = certificate_store.login_problem(world, cert["ksefSerial"])
        if problem is not None:
            return 460, problem
    elif cert is not None:
        if not cert["notBefore"] <= now <= cert["notAfter"]:
            return 460, CERT_INVALID
        if cert["verifyChain"]:
            # No trust store here: a self-signed chain is untrusted, any other cannot be built (PROTOCOL.md §3.3).
            return 460, CHAIN_UNTRUSTED if cert["selfSigned"] else CHAIN_ERROR
    token_ref = op.get("ksefTokenRef")
    if token_ref is not None:
        problem = tokens.usable_problem(world, token_ref, op["context"])
        if problem is not None:
            return 450, problem
    context = op["context"]
    if permissions.is_blocked(world.store, context["type"], context["value"]):
        return 480, BLOCKED
    author = op["subject"]
    if permissions.is_deceased(world.store, author["type"], author["value"]):
        return 470, DECEASED
    if not current_permissions(world, op):
        return 415, NO_PERMISSIONS
    return 200, None


def current_permissions(world: World, op: Record) -> list[str]:
    """XAdES: the subject's permissions in the context. Token: the token's permissions that its author
    still holds there (PROTOCOL.md §9.1: a token cannot carry more than its author has)."""
    context, subject = op["context"], op["subject"]
    held = permissions.effective_permissions(world.store, context["type"], context["value"],
                                             subject["type"], subject["value"])
    token_ref = op.get("ksefTokenRef")
    if token_ref is not None:
        held &= set(tokens.requested_permissions(world, token_ref))
    return sorted(held)


def _context_claims(op: Record) -> dict[str, Any]:
    return {"context-identifier-type": op["context"]["type"], "context-identifier-value": op["context"]["value"]}


def access_token(world: World, op: Record) -> dict[str, str]:
    subject = op["subject"]
    claims: dict[str, Any] = {
        "auth-ref": op["referenceNumber"], **_context_claims(op),
        "subject-type": subject["type"], "subject-value": subject["value"],
        "subject-details": json.dumps({"SubjectIdentifier": {"Type": subject["type"], "Value": subject["value"]}}),
        "permissions": current_permissions(world, op),
        "authentication-method": "Token" if op["method"] == "Token" else "XadesSignature",
    }
    if op.get("ksefTokenRef"):
        claims["ksef-token-ref"] = op["ksefTokenRef"]
    if op.get("allowedIps"):
        claims["allowed-ips"] = op["allowedIps"]
    token, exp = world.tokens.issue("ContextToken", dt.timedelta(seconds=world.config.access_token_ttl_s), claims)
    return {"token": token, "validUntil": iso(exp)}


def refresh_token(world: World, op: Record) -> dict[str, str]:
    token, exp = world.tokens.issue("RefreshToken", dt.timedelta(seconds=world.config.refresh_token_ttl_s),
                                    {"auth-ref": op["referenceNumber"], **_context_claims(op)})
    op["refreshValidUntil"] = iso(exp)
    op["refreshExp"] = exp.timestamp()
    return {"token": token, "validUntil": iso(exp)}


def describe(op: Record) -> dict[str, Any]:
    """The fields shared by GET /auth/{ref} and the items of GET /auth/sessions."""
    legacy, info = METHOD_INFO[op["method"]]
    body: dict[str, Any] = {"startDate": op["startDate"], "authenticationMethod": legacy,
                            "authenticationMethodInfo": dict(info), "status": op["status"],
                            "isTokenRedeemed": op["redeemed"]}
    if op["lastRefresh"]:
        body["lastTokenRefreshDate"] = op["lastRefresh"]
    if op["refreshValidUntil"]:
        body["refreshTokenValidUntil"] = op["refreshValidUntil"]
    return body


def revoke(world: World, op: Record) -> None:
    """DELETE /auth/sessions/…: the refresh token dies; access tokens already issued live until exp (§3.6)."""
    op["revoked"] = True
    op["status"] = status(425, [REVOKED_BY_USER])
    world.store.put(TABLE, op["referenceNumber"], op)
