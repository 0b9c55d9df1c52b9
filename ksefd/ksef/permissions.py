"""What the authenticated caller may do in its context (PROTOCOL.md §9.1, §9.2, §15 item 2).

* `personal_permissions(ctx)`: `POST /permissions/query/personal/grants`, every page. `granted` are the
  Active permission scopes granted in this context; `owner` is the 2.9.0 `ownerPermissions` list (what the
  caller may do as the context's Owner), None when KSeF did not send it (API before 2.9.0).
* `token_permissions(ctx, reference)`: `GET /tokens/{ref}`: the permissions a KSeF token was generated with
  (fixed for its lifetime) and its status. A token-authenticated caller may always read its own token.

A token may do what it was generated with, and only while its author still holds it (§9.1), so the caller's
effective permissions with a token are the intersection of the two.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .client import KsefContext
from .models import Model

PAGE_SIZE = 100             # the operation's maximum pageSize
MAX_PAGES = 50              # a person with more than 5000 grants in one context is not a real case


class _Identifier(Model):
    type: str
    value: str | None = None


class PersonalPermission(Model):
    id: str
    permission_scope: str
    permission_state: str
    description: str = ""
    start_date: dt.datetime | None = None
    can_delegate: bool = False
    context_identifier: _Identifier | None = None
    target_identifier: _Identifier | None = None


class _PermissionsPage(Model):
    permissions: list[PersonalPermission]
    has_more: bool
    owner_permissions: list[str] | None = None


class _TokenStatus(Model):
    reference_number: str
    status: str
    requested_permissions: list[str]


@dataclass(frozen=True)
class PersonalPermissions:
    granted: tuple[str, ...]            # Active scopes granted in this context (direct, by a parent, indirect)
    owner: tuple[str, ...] | None       # ownerPermissions; None when KSeF did not say (before 2.9.0)
    items: tuple[PersonalPermission, ...]

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self.granted) | frozenset(self.owner or ())


@dataclass(frozen=True)
class TokenPermissions:
    reference_number: str
    status: str                         # Pending | Active | Revoking | Revoked | Failed
    permissions: tuple[str, ...]


async def personal_permissions(ctx: KsefContext, page_size: int = PAGE_SIZE) -> PersonalPermissions:
    """Every page of the caller's own permissions in the current context (Active only); `page_size` 10..100."""
    items: list[PersonalPermission] = []
    owner: set[str] | None = None
    for offset in range(MAX_PAGES):
        response = await ctx.request("POST", "/permissions/query/personal/grants", json={"permissionState": "Active"},
                                     query={"pageOffset": str(offset), "pageSize": str(page_size)},
                                     replay_safe=True, expect=(200,))
        page = response.decode(_PermissionsPage)
        items += page.permissions
        if page.owner_permissions is not None:
            owner = (owner or set()) | set(page.owner_permissions)
        if not page.has_more:
            break
    here = ctx.context
    granted = {p.permission_scope for p in items if p.permission_state == "Active" and (
        p.context_identifier is None or (p.context_identifier.type, p.context_identifier.value) == (here.type,
                                                                                                    here.value))}
    return PersonalPermissions(tuple(sorted(granted)), None if owner is None else tuple(sorted(owner)), tuple(items))


async def token_permissions(ctx: KsefContext, reference_number: str) -> TokenPermissions:
    response = await ctx.request("GET", "/tokens/{referenceNumber}", params={"referenceNumber": reference_number},
                                 expect=(200,))
    token = response.decode(_TokenStatus)
    return TokenPermissions(token.reference_number, token.status, tuple(sorted(set(token.requested_permissions))))
