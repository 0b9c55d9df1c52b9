"""POST /permissions/query/personal/grants: the caller's own permissions in the current context
(openapi.json 2.9.0; PROTOCOL.md §9.2, §15 item 2).

* `permissions`: one PersonalPermission per permission granted to the caller (any of its identifiers: the
  NIP<->PESEL link of a TEST person counts) in the current context. The simulator has direct grants only
  (POST /testdata/permissions), so every item is Active, cannot be delegated and has no target.
* `ownerPermissions` (new in 2.9.0, nullable): what the caller may do as the context's Owner. Owner is
  never a granted permission (PROTOCOL.md §9.2); it is left out when the caller is not the owner (KSeF leaves
  out null fields in its examples).
* Filters: `contextIdentifier` (the granting context; ours is the current one), `targetIdentifier` (indirect
  grants only: none here, so it matches nothing), `permissionTypes`, `permissionState`.
* Sort `startDate` descending then `id` ascending (the operation's `x-sort`); paged by `pageOffset` /
  `pageSize` with `hasMore`. No required permission: any authenticated caller may read its own.
A token-authenticated caller is its token's author (auth.py); what the token itself may do is the token's
`requestedPermissions` (GET /tokens/{ref}), not this list.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from . import permissions
from .clock import iso
from .spec import API_PREFIX, json_body
from .store import Record
from .world import WORLD

_ID_NAMESPACE = uuid.UUID("6f1c1c52-3d0e-4b61-9a55-6f2b1de0a7c1")   # stable ids across restarts
DESCRIPTION = "Uprawnienie nadane w środowisku testowym"             # minLength 5 (PersonalPermission)


def _items(grant: Record, now: str) -> list[dict[str, Any]]:
    context = grant["contextIdentifier"]
    return [{
        "id": str(uuid.uuid5(_ID_NAMESPACE, f"{context['type']}:{context['value']}|"
                                            f"{grant['authorizedIdentifier']['value']}|{scope}")),
        "contextIdentifier": {"type": context["type"], "value": context["value"]},
        "permissionScope": scope,
        "description": grant.get("descriptions", {}).get(scope) or DESCRIPTION,
        "permissionState": "Active",
        "startDate": grant.get("startDate") or now,
        "canDelegate": False,
    } for scope in grant["permissions"]]


def _matches(item: dict[str, Any], body: dict[str, Any]) -> bool:
    wanted_context = body.get("contextIdentifier")
    if wanted_context and (wanted_context["type"], wanted_context["value"]) != (
            item["contextIdentifier"]["type"], item["contextIdentifier"]["value"]):
        return False
    if body.get("targetIdentifier"):
        return False                       # no indirect grants in the simulator
    types = body.get("permissionTypes")
    if types and item["permissionScope"] not in types:
        return False
    state = body.get("permissionState")
    return not state or state == item["permissionState"]


async def personal_grants(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    caller = world.caller(request)          # checks pageOffset / pageSize against the spec (21405)
    body = await json_body(request) if request.body_exists else {}
    now = iso(world.clock.now())
    ids = permissions.identities(world.store, caller.subject_type, caller.subject_value)
    found: list[dict[str, Any]] = []
    for kind, value in sorted(ids):
        grant = world.store.get(permissions.GRANTS, permissions.grant_key(caller.context_type, caller.context_value,
                                                                          kind, value))
        if grant is not None:
            found += [item for item in _items(grant, now) if _matches(item, body)]
    found.sort(key=lambda item: item["id"])
    found.sort(key=lambda item: item["startDate"], reverse=True)
    offset, size = int(request.query.get("pageOffset", "0")), int(request.query.get("pageSize", "10"))
    answer: dict[str, Any] = {"permissions": found[offset * size:(offset + 1) * size],
                              "hasMore": (offset + 1) * size < len(found)}
    owner = permissions.owner_permissions(world.store, caller.context_type, caller.context_value, ids)
    if owner:
        answer["ownerPermissions"] = owner
    return web.json_response(answer)


def register(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/permissions/query/personal/grants", personal_grants)
