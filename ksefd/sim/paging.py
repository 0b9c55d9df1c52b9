"""Continuation-token paging shared by the list operations (PROTOCOL.md §3.6, §4.5, §9.1): GET /sessions,
a session's invoices (all and failed), GET /tokens and GET /auth/sessions.

The next page is asked for with the previous answer's `continuationToken` in the `x-continuation-token`
request header. Our tokens are Base64URL JSON `{"s": scope, "o": offset}`; a token that does not decode, or
that belongs to another listing (another scope), gives 400 21418 as on KSeF. `pageSize` has already been
checked against the operation's range by `spec.check_parameters` (World.caller).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from aiohttp import web

from .errors import KsefException

DEFAULT_PAGE_SIZE = 10        # every paged operation's `pageSize` default in openapi.json
T = TypeVar("T")


def page_size(request: web.Request) -> int:
    raw = request.query.get("pageSize", str(DEFAULT_PAGE_SIZE))
    try:
        return int(raw)
    except ValueError:
        raise KsefException(21405, [f"pageSize: wartość {raw!r} nie jest liczbą całkowitą."]) from None


def offset_from(request: web.Request, scope: str) -> int:
    """Where the page starts: 0, or the offset carried by `x-continuation-token` (21418 if malformed)."""
    token = request.headers.get("x-continuation-token")
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4)))
        offset = data["o"]
        if data["s"] != scope or not isinstance(offset, int) or offset < 0:
            raise ValueError("a token of another listing")
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error):
        raise KsefException(21418, [f"x-continuation-token: {token[:40]!r}"]) from None
    return offset


def token_for(scope: str, offset: int) -> str:
    raw = json.dumps({"s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def page(request: web.Request, items: list[T], scope: str) -> tuple[list[T], str | None]:
    """One page of `items` and the continuation token of the next page (None on the last page)."""
    size, start = page_size(request), offset_from(request, scope)
    following = token_for(scope, start + size) if start + size < len(items) else None
    return items[start:start + size], following


def with_token(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    """`continuationToken` only when there is a next page (KSeF leaves it out on the last one)."""
    if token:
        body["continuationToken"] = token
    return body
