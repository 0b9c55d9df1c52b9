"""TEST-only data endpoints (PROTOCOL.md §11, openapi.json tag "Dane testowe"): persons, subjects, ZAW-FA
style permission grants, attachment consent and context blocking. No security requirement, as in the spec.
The limits and rate-limit endpoints under /testdata belong to limits.py.
"""

from __future__ import annotations

from aiohttp import web

from . import permissions
from .clock import iso
from .errors import KsefException
from .spec import API_PREFIX, json_body
from .world import WORLD


def _ok() -> web.Response:
    return web.Response(status=200)


async def create_person(request: web.Request) -> web.Response:
    """POST /testdata/person: Owner on the NIP, login by NIP or PESEL; isBailiff adds EnforcementOperations."""
    world = request.app[WORLD]
    body = await json_body(request)
    if world.store.get(permissions.PERSONS, body["nip"]) is not None or \
            permissions.person_of(world.store, "Pesel", body["pesel"]) is not None:
        raise KsefException(30001, [f"Osoba o NIP {body['nip']} lub PESEL {body['pesel']} już istnieje."])
    world.store.put(permissions.PERSONS, body["nip"], {
        "nip": body["nip"], "pesel": body["pesel"], "isBailiff": bool(body["isBailiff"]),
        "isDeceased": bool(body.get("isDeceased", False)), "description": body["description"],
        "createdDate": body.get("createdDate") or iso(world.clock.now())})
    return _ok()


async def remove_person(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await json_body(request)
    world.store.delete(permissions.PERSONS, body["nip"])
    return _ok()


async def create_subject(request: web.Request) -> web.Response:
    """POST /testdata/subject: an enforcement authority, VAT group or JST, with its subunits."""
    world = request.app[WORLD]
    body = await json_body(request)
    if world.store.get(permissions.SUBJECTS, body["subjectNip"]) is not None:
        raise KsefException(30001, [f"Podmiot o NIP {body['subjectNip']} już istnieje."])
    world.store.put(permissions.SUBJECTS, body["subjectNip"], {
        "subjectNip": body["subjectNip"], "subjectType": body["subjectType"], "description": body["description"],
        "subunits": body.get("subunits") or [], "createdDate": body.get("createdDate") or iso(world.clock.now())})
    return _ok()


async def remove_subject(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await json_body(request)
    world.store.delete(permissions.SUBJECTS, body["subjectNip"])
    return _ok()


def _check_identifier(kind: str, value: str) -> None:
    lengths = {"Nip": 10, "Pesel": 11, "Fingerprint": 64}
    if len(value) != lengths[kind] or (kind != "Fingerprint" and not value.isdigit()):
        raise KsefException(21405, [f"authorizedIdentifier.value: {value!r} nie jest poprawnym identyfikatorem "
                                    f"typu {kind} ({lengths[kind]} znaków)."])


async def grant_permissions(request: web.Request) -> web.Response:
    """POST /testdata/permissions: grants in a Nip context to a NIP, PESEL or certificate fingerprint."""
    world = request.app[WORLD]
    body = await json_body(request)
    authorized = body["authorizedIdentifier"]
    _check_identifier(authorized["type"], authorized["value"])
    permissions.grant(world.store, body["contextIdentifier"], authorized,
                      [p["permissionType"] for p in body["permissions"]], iso(world.clock.now()),
                      {p["permissionType"]: p["description"] for p in body["permissions"] if p.get("description")})
    return _ok()


async def revoke_permissions(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await json_body(request)
    permissions.revoke(world.store, body["contextIdentifier"], body["authorizedIdentifier"])
    return _ok()


async def allow_attachments(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await json_body(request)
    permissions.set_attachments(world.store, body["nip"], True)
    return _ok()


async def revoke_attachments(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await json_body(request)
    permissions.set_attachments(world.store, body["nip"], False, {"expectedEndDate": body.get("expectedEndDate")})
    return _ok()


def _context(body: dict[str, object]) -> dict[str, str]:
    context = body.get("contextIdentifier")
    if not isinstance(context, dict):
        raise KsefException(21405, ["contextIdentifier: pole jest wymagane."])
    return {"type": str(context["type"]), "value": str(context["value"])}


async def block_context(request: web.Request) -> web.Response:
    """POST /testdata/context/block: auth into the context ends with status 480 (PROTOCOL.md §11)."""
    world = request.app[WORLD]
    context = _context(await json_body(request))
    world.store.put(permissions.BLOCKED, permissions.context_key(context["type"], context["value"]),
                    {"contextIdentifier": context, "since": iso(world.clock.now())})
    return _ok()


async def unblock_context(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    context = _context(await json_body(request))
    world.store.delete(permissions.BLOCKED, permissions.context_key(context["type"], context["value"]))
    return _ok()


def register(app: web.Application) -> None:
    routes = {
        "person": create_person, "person/remove": remove_person,
        "subject": create_subject, "subject/remove": remove_subject,
        "permissions": grant_permissions, "permissions/revoke": revoke_permissions,
        "attachment": allow_attachments, "attachment/revoke": revoke_attachments,
        "context/block": block_context, "context/unblock": unblock_context,
    }
    for path, handler in routes.items():
        app.router.add_post(f"{API_PREFIX}/testdata/{path}", handler)
