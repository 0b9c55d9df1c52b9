"""The simulator's own endpoints, outside /v2 (not part of KSeF): test controls under /sim and a
Latarnia-style status service (PROTOCOL.md §1: `GET /status`, `GET /messages`, public, no auth).

    GET    /sim/faults                     the fault switches in force (faults.py)
    POST   /sim/faults                     {"spec": "5xx=0.1,seed=3", "outages": [{"from", "to", "kind",
                                           "text", "blocksApi"}], "unavailableSessions": ["<SO ref>"]}:
                                           replaces them (blocksApi false: announced only, /v2 answers)
    DELETE /sim/faults                     every switch off
    POST   /sim/keys/rotate                {"usage": "SymmetricKeyEncryption" | "KsefTokenEncryption"}
    GET    /sim/clock, POST /sim/clock     {"advance": seconds} or {"set": "<ISO-8601>"} (ManualClock only)
    POST   /sim/sessions/{ref}/expire      the session's lifetime (online) or upload window (batch) ends now
    GET    /sim/ratelimits                 {"requestsDuringBlock": n, "tooManyRequests": n, "longestRetryAfter": s,
                                           "duringBlock": [{context, ip, group, requests}], "blocks": [...]}:
                                           requests that arrived during a 429 block (ratelimits.py)
    GET    /sim/connections                {"connections": n, "requests": n, "operations": {"POST /v2/…": {…}}}:
                                           TCP connections clients used, requests over them (connections.py);
                                           DELETE starts the tally again
    GET    /status                         {"status": AVAILABLE|MAINTENANCE|FAILURE|TOTAL_FAILURE, "messages"}
    GET    /messages                       every published Latarnia message
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import faults, ratelimits, sessions
from .clock import ManualClock, iso, parse_iso
from .world import WORLD, World


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        raise _bad(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


def _faults_view(world: World) -> dict[str, Any]:
    current = faults.state(world)
    return {**current.settings.to_json(), "unavailableSessions": sorted(current.unavailable)}


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_view(request.app[WORLD]))


def _outage(item: Any, now: Any) -> faults.Outage:
    if not isinstance(item, dict) or "from" not in item or "to" not in item:
        raise _bad('each outage needs "from" and "to" (ISO-8601), optional "kind" and "text"')
    kind = str(item.get("kind", "FAILURE")).upper()
    if kind not in faults.KINDS:
        raise _bad(f"outage kind must be one of {', '.join(faults.KINDS)}, not {kind!r}")
    try:
        start, end = parse_iso(str(item["from"])), parse_iso(str(item["to"]))
    except ValueError as exc:
        raise _bad(f"outage dates: {exc}") from None
    if end <= start:
        raise _bad("outage: 'to' must be later than 'from'")
    return faults.Outage(start, end, kind, str(item.get("text", "")), published=min(now, start),
                         blocks_api=bool(item.get("blocksApi", True)))


async def set_faults(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    body = await _body(request)
    now = world.clock.now()
    try:
        settings = faults.parse(str(body.get("spec", "")), now)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    settings.outages += [_outage(item, now) for item in body.get("outages") or []]
    current = faults.replace(world, settings)
    current.unavailable.update(str(ref) for ref in body.get("unavailableSessions") or [])
    return web.json_response(_faults_view(world))


async def clear_faults(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    faults.replace(world, faults.Settings())
    return web.json_response(_faults_view(world))


async def rotate_key(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    usage = str((await _body(request)).get("usage", ""))
    try:
        key_id = world.keys.rotate(usage)
    except ValueError:
        raise _bad('usage must be "KsefTokenEncryption" or "SymmetricKeyEncryption"') from None
    return web.json_response({"usage": usage, "publicKeyId": key_id})


async def get_clock(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    return web.json_response({"now": iso(world.clock.now()), "manual": isinstance(world.clock, ManualClock)})


async def move_clock(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    if not isinstance(world.clock, ManualClock):
        raise _bad("the simulator runs on the system clock; start it with a ManualClock to move time")
    body = await _body(request)
    if "advance" in body:
        world.clock.advance(float(body["advance"]))
    elif "set" in body:
        world.clock.set(parse_iso(str(body["set"])))
    else:
        raise _bad('send {"advance": seconds} or {"set": "<ISO-8601>"}')
    return await get_clock(request)


async def expire_session(request: web.Request) -> web.Response:
    """Fault "session expiry" on demand: the online session's validUntil (or the batch upload window)
    becomes now, so the next look closes (online) or cancels (batch) it as KSeF does."""
    world = request.app[WORLD]
    reference = request.match_info["referenceNumber"]
    session = world.store.get(sessions.TABLE, reference)
    if session is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no session {reference}"}), content_type="application/json")
    field = "validUntil" if session["sessionType"] == "Online" else "uploadDeadline"
    session[field] = iso(world.clock.now())
    world.store.put(sessions.TABLE, reference, session)
    sessions.get(world, reference)
    return web.json_response({"referenceNumber": reference, field: session[field]})


async def get_ratelimits(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    limiter = ratelimits.limiter(world)
    return web.json_response({**limiter.tally.to_json(), "blocks": limiter.blocks(world.clock.now().timestamp())})


# Latarnia ----------------------------------------------------------------------------------------------

def _messages(world: World, only_active: bool = False) -> list[dict[str, Any]]:
    now = world.clock.now()
    found: list[dict[str, Any]] = []
    outages = sorted(faults.state(world).settings.outages, key=lambda o: o.start)
    for event_id, outage in enumerate(outages, start=1):
        active = outage.start <= now < outage.end
        if only_active and not active:
            continue
        text = outage.text or f"{faults.TITLES[outage.kind]} od {iso(outage.start)} do {iso(outage.end)}."
        base = {"eventId": event_id, "category": outage.kind, "title": faults.TITLES[outage.kind], "text": text,
                "start": iso(outage.start), "version": 1}
        if outage.kind == "MAINTENANCE":
            if outage.published is not None and now >= outage.published:
                found.append({**base, "id": f"{event_id}-announcement", "type": "MAINTENANCE_ANNOUNCEMENT",
                              "end": iso(outage.end), "published": iso(outage.published)})
            continue
        if now >= outage.start:
            found.append({**base, "id": f"{event_id}-start", "type": "FAILURE_START", "end": None,
                          "published": iso(outage.start)})
        if now >= outage.end and not only_active:
            found.append({**base, "id": f"{event_id}-end", "type": "FAILURE_END", "end": iso(outage.end),
                          "published": iso(outage.end)})
    return found


async def lighthouse_status(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    outage = faults.state(world).outage_at(world.clock.now())
    status = outage.kind if outage is not None else "AVAILABLE"
    return web.json_response({"status": status, "messages": _messages(world, only_active=True)})


async def lighthouse_messages(request: web.Request) -> web.Response:
    return web.json_response(_messages(request.app[WORLD]))


def register(app: web.Application) -> None:
    faults.install(app[WORLD])
    app.router.add_get("/sim/faults", get_faults)
    app.router.add_post("/sim/faults", set_faults)
    app.router.add_delete("/sim/faults", clear_faults)
    app.router.add_post("/sim/keys/rotate", rotate_key)
    app.router.add_get("/sim/clock", get_clock)
    app.router.add_post("/sim/clock", move_clock)
    app.router.add_post("/sim/sessions/{referenceNumber}/expire", expire_session)
    app.router.add_get("/sim/ratelimits", get_ratelimits)
    app.router.add_get("/status", lighthouse_status)
    app.router.add_get("/messages", lighthouse_messages)
