"""Pre-signed storage URLs served outside /v2, like MF's Azure blob links (PROTOCOL.md §4.5, §4.6, §5).

A URL is `{root}/storage/{path}?se={expiry epoch s}&sig={HMAC-SHA256(path|se|method)}`. The secret
lives in the store, so links survive a restart. Requests to such URLs must not carry an
Authorization header (MF: "nie należy wysyłać tokenu dostępowego"); `verify` refuses those, expired
links and bad signatures with 403, which is what the blob storage answers.

Usage (any route module): `url, expires = presigned.url(world, request, "upo/<session>/<name>.xml",
method="GET", ttl_s=...)`; in the storage handler: `presigned.verify(world, request)`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from urllib.parse import quote

from aiohttp import web

from .world import World

PREFIX = "/storage/"
DEFAULT_TTL_S = 3 * 24 * 3600        # MF's examples: links valid ~3 days


def _secret(world: World) -> bytes:
    rec = world.store.get("sim_meta", "presign")
    if rec is None:
        rec = {"secret": secrets.token_hex(32)}
        world.store.put("sim_meta", "presign", rec)
    return bytes.fromhex(rec["secret"])


def _signature(world: World, path: str, expires: int, method: str) -> str:
    mac = hmac.new(_secret(world), f"{method.upper()}|{path}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def root_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def url(world: World, request: web.Request, path: str, *, method: str = "GET",
        ttl_s: int = DEFAULT_TTL_S) -> tuple[str, dt.datetime]:
    """An absolute pre-signed URL for `PREFIX + path` and its expiry instant."""
    full = PREFIX + path.lstrip("/")
    expires_at = world.clock.now().replace(microsecond=0) + dt.timedelta(seconds=ttl_s)
    expires = int(expires_at.timestamp())
    sig = _signature(world, full, expires, method)
    return f"{root_url(request)}{quote(full)}?se={expires}&sig={sig}", expires_at


def verify(world: World, request: web.Request) -> None:
    """403 unless the request carries a valid, unexpired signature for its own path and no bearer."""
    if "Authorization" in request.headers:
        raise web.HTTPForbidden(text="Pre-signed URLs must be used without an Authorization header.")
    try:
        expires = int(request.query.get("se", ""))
    except ValueError:
        raise web.HTTPForbidden(text="Missing or malformed expiry (se).") from None
    expected = _signature(world, request.path, expires, request.method)
    if not hmac.compare_digest(expected, request.query.get("sig", "")):
        raise web.HTTPForbidden(text="Signature does not match.")
    if world.clock.now().timestamp() > expires:
        raise web.HTTPForbidden(text="The link has expired.")
