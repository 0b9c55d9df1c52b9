"""KSeF tokens (PROTOCOL.md §9.1, openapi.json /tokens): POST /tokens, GET /tokens, GET and DELETE
/tokens/{ref}, plus what authentication needs to know about a token.

Status machine, deterministic for tests: `Pending` until it has been read once (GET) or until
SimConfig `token_activation_delay_s` has passed on the clock, then `Active`; DELETE gives `Revoking`, which
becomes `Revoked` the same way. Only the SHA-256 of the secret is stored, never the secret itself.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from aiohttp import web

from . import paging, permissions
from .clock import iso
from .errors import Forbidden, KsefException
from .ids import reference_number
from .security import Caller
from .spec import API_PREFIX, json_body
from .store import Record
from .world import WORLD, World

TABLE = "ksef_tokens"
SECRETS = "ksef_token_secrets"            # sha256(secret) -> reference number
TOKEN_CONTEXTS = ("Nip", "InternalId")    # PROTOCOL.md §9.1: 26002 elsewhere
SECRET_PREFIX = {"Nip": "nip", "InternalId": "internalId"}


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _delay(world: World) -> float:
    return world.config.token_activation_delay_s


def advance(world: World, record: Record) -> Record:
    """Apply the transitions that are due (see the module docstring); stores the record if it changed."""
    due = record.get("seen") or world.clock.now().timestamp() >= record["changedAt"] + _delay(world)
    following = {"Pending": "Active", "Revoking": "Revoked"}.get(record["status"])
    if following and due:
        record["status"] = following
        record["seen"] = False
        record["changedAt"] = world.clock.now().timestamp()
        world.store.put(TABLE, record["referenceNumber"], record)
    return record


def find_by_secret(world: World, secret: str) -> Record | None:
    ref = world.store.get(SECRETS, _secret_hash(secret))
    return world.store.get(TABLE, ref["ref"]) if ref else None


def usable_problem(world: World, ref: str, context: dict[str, str]) -> str | None:
    """Why the token cannot authenticate into `context` now (a 450 detail, PROTOCOL.md §3.4), or None."""
    record = world.store.get(TABLE, ref)
    if record is None:
        return "Nieprawidłowy token"
    status = advance(world, record)["status"]
    if status in ("Revoking", "Revoked"):
        return "Token unieważniony"
    if status != "Active":
        return "Token nieaktywny"
    if record["contextIdentifier"] != {"type": context["type"], "value": context["value"]}:
        return f"Token nie może być użyty w kontekście {context['value']}"
    return None


def is_revoked(world: World, ref: str) -> bool:
    record = world.store.get(TABLE, ref)
    return record is None or advance(world, record)["status"] in ("Revoking", "Revoked")


def requested_permissions(world: World, ref: str) -> list[str]:
    record = world.store.get(TABLE, ref)
    return list(record["requestedPermissions"]) if record else []


def mark_used(world: World, ref: str) -> None:
    record = world.store.get(TABLE, ref)
    if record is not None:
        record["lastUseDate"] = iso(world.clock.now())
        world.store.put(TABLE, ref, record)


def public_view(record: Record) -> dict[str, Any]:
    """TokenStatusResponse / QueryTokensResponseItem; `lastUseDate` only once the token was used (as in the
    spec's examples, KSeF leaves out null fields)."""
    body = {k: record[k] for k in ("referenceNumber", "authorIdentifier", "contextIdentifier", "description",
                                   "requestedPermissions", "dateCreated", "status")}
    if record.get("lastUseDate"):
        body["lastUseDate"] = record["lastUseDate"]
    body["statusDetails"] = record.get("statusDetails") or []
    return body


# visibility (openapi.json GET/DELETE /tokens descriptions) -------------------------------------------
def _authored_by(world: World, caller: Caller, record: Record) -> bool:
    author = record["authorIdentifier"]
    ids = permissions.identities(world.store, caller.subject_type, caller.subject_value)
    return (str(author["type"]), permissions.normalize(author["type"], author["value"])) in ids


def _visible(world: World, caller: Caller, record: Record, privileged: tuple[str, ...]) -> bool:
    if record["contextIdentifier"] != {"type": caller.context_type, "value": caller.context_value}:
        return False
    if caller.permissions.intersection(privileged):
        return True
    if caller.ksef_token_reference is not None:
        return bool(record["referenceNumber"] == caller.ksef_token_reference)
    return _authored_by(world, caller, record)


def _lookup(world: World, caller: Caller, ref: str, privileged: tuple[str, ...]) -> Record:
    record = world.store.get(TABLE, ref)
    if record is None or record["contextIdentifier"] != {"type": caller.context_type, "value": caller.context_value}:
        raise KsefException(21405, [f"Token KSeF o numerze referencyjnym {ref} nie istnieje w bieżącym kontekście."])
    if not _visible(world, caller, record, privileged):
        raise Forbidden("insufficient-resource-access", "Brak dostępu do wskazanego tokena KSeF.")
    return record


# routes ------------------------------------------------------------------------------------------------
async def generate(request: web.Request) -> web.Response:
    """POST /tokens (PROTOCOL.md §9.1)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await json_body(request)
    if caller.method == "Token":
        # PROTOCOL.md §9.1: "it needs a prior XAdES authentication".
        raise Forbidden("auth-method-not-allowed", "Ta operacja nie jest dostępna dla użytej metody uwierzytelnienia.",
                        {"authenticationMethodCategory": "Token"})
    if caller.context_type not in TOKEN_CONTEXTS:
        raise KsefException(26002, [f"Bieżący typ kontekstu: {caller.context_type}; dozwolone: Nip, InternalId."])
    wanted = list(dict.fromkeys(body["permissions"]))
    missing = sorted(set(wanted) - caller.permissions)
    if missing:
        raise KsefException(26001, [f"Brakujące uprawnienia: {', '.join(missing)}."])
    now = world.clock.now()
    ref = reference_number("EC", now)
    secret = f"{ref}|{SECRET_PREFIX[caller.context_type]}-{caller.context_value}|{secrets.token_hex(32)}"
    record: Record = {
        "referenceNumber": ref, "description": body["description"], "requestedPermissions": wanted,
        "authorIdentifier": {"type": caller.subject_type, "value": caller.subject_value},
        "contextIdentifier": {"type": caller.context_type, "value": caller.context_value},
        "dateCreated": iso(now), "createdAt": now.timestamp(), "changedAt": now.timestamp(),
        "status": "Pending", "seen": False, "lastUseDate": None, "statusDetails": [],
    }
    world.store.put(TABLE, ref, record)
    world.store.put(SECRETS, _secret_hash(secret), {"ref": ref})
    return web.json_response({"referenceNumber": ref, "token": secret}, status=202)


def _filters(request: web.Request) -> tuple[set[str], str, str, str | None]:
    """The query's filters; their values were checked against openapi.json by World.caller (21405)."""
    return (set(request.query.getall("status", [])), request.query.get("description", "").lower(),
            request.query.get("authorIdentifier", "").lower(), request.query.get("authorIdentifierType"))


async def list_tokens(request: web.Request) -> web.Response:
    """GET /tokens with filters, sorted by dateCreated descending, paged by x-continuation-token."""
    world = request.app[WORLD]
    caller = world.caller(request)
    statuses, description, author, author_type = _filters(request)
    found = []
    for record in world.store.values(TABLE):
        if not _visible(world, caller, record, ("CredentialsManage", "CredentialsRead")):
            continue
        advance(world, record)
        ident = record["authorIdentifier"]
        if ((statuses and record["status"] not in statuses)
                or (description and description not in record["description"].lower())
                or (author and author not in ident["value"].lower())
                or (author_type and ident["type"] != author_type)):
            continue
        found.append(record)
    found.sort(key=lambda r: (r["createdAt"], r["referenceNumber"]), reverse=True)
    chunk, following = paging.page(request, found, "tokens")
    for record in chunk:
        _observe(world, record)
    return web.json_response(paging.with_token({"tokens": [public_view(r) for r in chunk]}, following))


def _observe(world: World, record: Record) -> None:
    if record["status"] in ("Pending", "Revoking") and not record.get("seen"):
        record["seen"] = True
        world.store.put(TABLE, record["referenceNumber"], record)


async def get_token(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    record = advance(world, _lookup(world, caller, request.match_info["referenceNumber"],
                                    ("CredentialsManage", "CredentialsRead")))
    body = public_view(record)
    _observe(world, record)
    return web.json_response(body)


async def revoke_token(request: web.Request) -> web.Response:
    """DELETE /tokens/{ref}: -> Revoking -> Revoked; its auth operations can no longer redeem or refresh."""
    world = request.app[WORLD]
    caller = world.caller(request)
    record = advance(world, _lookup(world, caller, request.match_info["referenceNumber"], ("CredentialsManage",)))
    if record["status"] in ("Pending", "Active", "Failed"):
        record["status"] = "Revoking"
        record["seen"] = False
        record["changedAt"] = world.clock.now().timestamp()
        world.store.put(TABLE, record["referenceNumber"], record)
    return web.Response(status=204)


def register(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/tokens", generate)
    app.router.add_get(f"{API_PREFIX}/tokens", list_tokens)
    app.router.add_get(f"{API_PREFIX}/tokens/{{referenceNumber}}", get_token)
    app.router.add_delete(f"{API_PREFIX}/tokens/{{referenceNumber}}", revoke_token)
