"""Auth-session management (PROTOCOL.md §3.6): GET /auth/sessions, DELETE /auth/sessions/current and
DELETE /auth/sessions/{ref}. Revoking invalidates the refresh token (status 425); access tokens already
issued stay valid until their `exp` (§3.5).
"""

from __future__ import annotations

from aiohttp import web

from . import auth_ops, paging
from .errors import Forbidden, KsefException, Unauthorized
from .security import bearer
from .spec import API_PREFIX
from .store import Record
from .world import WORLD, World


def _active(world: World, op: Record) -> bool:
    op = auth_ops.settle(world, op)
    return (op["status"]["code"] == 200 and op["redeemed"] and not op["revoked"]
            and float(op.get("refreshExp") or 0) > world.clock.now().timestamp())


async def list_sessions(request: web.Request) -> web.Response:
    """GET /auth/sessions: the context's active auth sessions, newest first."""
    world = request.app[WORLD]
    caller = world.caller(request)
    context = {"type": caller.context_type, "value": caller.context_value}
    found = [op for op in world.store.values(auth_ops.TABLE) if op["context"] == context and _active(world, op)]
    found.sort(key=lambda op: (op["startedAt"], op["referenceNumber"]), reverse=True)
    chunk, following = paging.page(request, found, "auth-sessions")
    items = [{"referenceNumber": op["referenceNumber"], "isCurrent": op["referenceNumber"] == caller.auth_reference,
              **auth_ops.describe(op)} for op in chunk]
    return web.json_response(paging.with_token({"items": items}, following))


def _current_reference(request: web.Request) -> str:
    """The auth-ref of the access token, or of the refresh token (both are accepted, PROTOCOL.md §3.6)."""
    world = request.app[WORLD]
    token = bearer(request)
    for token_type in ("ContextToken", "RefreshToken"):
        try:
            ref: str = world.tokens.verify(token, token_type)["auth-ref"]
        except Unauthorized:
            continue
        return ref
    raise Unauthorized("Wymagany jest token dostępu lub token odświeżania.")


async def revoke_current(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    op = world.store.get(auth_ops.TABLE, _current_reference(request))
    if op is None:
        raise Unauthorized("Sesja uwierzytelnienia nie istnieje.")
    auth_ops.revoke(world, op)
    return web.Response(status=204)


async def revoke_other(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)
    ref = request.match_info["referenceNumber"]
    op = world.store.get(auth_ops.TABLE, ref)
    if op is None or op["context"] != {"type": caller.context_type, "value": caller.context_value}:
        # The operation documents no code but 21405 for this (openapi.json).
        raise KsefException(21405, [f"Sesja uwierzytelnienia {ref} nie istnieje w bieżącym kontekście."])
    if op["subject"] != {"type": caller.subject_type, "value": caller.subject_value} \
            and "CredentialsManage" not in caller.permissions:
        raise Forbidden("insufficient-resource-access", "Brak dostępu do wskazanej sesji uwierzytelnienia.")
    auth_ops.revoke(world, op)
    return web.Response(status=204)


def register(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/auth/sessions", list_sessions)
    app.router.add_delete(f"{API_PREFIX}/auth/sessions/current", revoke_current)
    app.router.add_delete(f"{API_PREFIX}/auth/sessions/{{referenceNumber}}", revoke_other)
