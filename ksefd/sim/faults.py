"""Fault injection for resilience tests: off by default, set at start with `ksefd sim --faults SPEC`
(SimConfig.faults) or at run time through `/sim/faults` (control.py).

SPEC is a comma-separated list of switches (README "Simulator fault switches"):

    seed=N            seed of the random generator, so a run is repeatable (default 0)
    5xx=P             share P of requests answered 500/502/503/504 before they are processed
    html=P            share of those 5xx sent as an HTML page, as the real CDN does (default 0.5);
                      the others are half empty bodies, half problem+json
    drop=P            share of requests whose connection is closed after they were processed
                      (the answer is lost: the client cannot know whether it happened)
    latency=S         seconds added to requests; latency_share=P limits it to a share (default 1)
    outage=A:D[:K]    from A seconds after the switch is set, for D seconds, /v2 answers 503 and
                      GET /status reports K (MAINTENANCE, FAILURE or TOTAL_FAILURE; default FAILURE);
                      may be repeated (POST /sim/faults outages with "blocksApi": false announce one on
                      Latarnia while /v2 keeps answering)
    upo_delay=S       the session UPO is ready S seconds (simulator clock) after the session is done
    unavailable=P     each invoice send turns its online session "temporarily unavailable" with
                      chance P: that send and every later one get 400 21184 (PROTOCOL.md §14.3)
    late=P            share P of accepted invoices committed late behind the HWM: they become
                      visible to queries, exports and downloads only `late_by` seconds (default 60)
                      after their permanentStorageDate, when the reported HWM has passed it
    session_ttl=S     online sessions opened from now on expire after S seconds instead of 12 h

5xx, drop and latency hit /v2 and the pre-signed /storage URLs; outages hit /v2 only. Every answer the
faults make carries `X-Sim-Fault: <switch>`, so tests (and the openapi.json conformance check, which
the spec's undocumented 5xx would otherwise trip) can tell them from KSeF's own answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ksefd.i18n import _

from . import waiting
from .clock import iso, parse_iso
from .spec import API_PREFIX
from .world import WORLD, World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KINDS = ("MAINTENANCE", "FAILURE", "TOTAL_FAILURE")
SEVERITY = {"MAINTENANCE": 1, "FAILURE": 2, "TOTAL_FAILURE": 3}
TITLES = {"MAINTENANCE": "Prace serwisowe KSeF", "FAILURE": "Awaria KSeF", "TOTAL_FAILURE": "Całkowita awaria KSeF"}
PROBABILITIES = {"5xx": "error_rate", "html": "html_share", "drop": "drop_rate", "latency_share": "latency_share",
                 "unavailable": "unavailable_rate", "late": "late_rate"}
SECONDS = {"latency": "latency_s", "upo_delay": "upo_delay_s", "late_by": "late_by_s", "session_ttl": "session_ttl_s"}
SWITCHES = ("seed", *PROBABILITIES, *SECONDS, "outage")
STORAGE_PREFIX = "/storage/"


@dataclass
class Outage:
    start: dt.datetime
    end: dt.datetime
    kind: str = "FAILURE"
    text: str = ""
    published: dt.datetime | None = None
    blocks_api: bool = True      # False: announced on Latarnia only, /v2 keeps answering (a partial failure)

    def to_json(self) -> dict[str, Any]:
        return {"from": iso(self.start), "to": iso(self.end), "kind": self.kind, "text": self.text,
                "blocksApi": self.blocks_api}


@dataclass
class Settings:
    seed: int = 0
    error_rate: float = 0.0
    html_share: float = 0.5
    drop_rate: float = 0.0
    latency_s: float = 0.0
    latency_share: float = 1.0
    upo_delay_s: float = 0.0
    unavailable_rate: float = 0.0
    late_rate: float = 0.0
    late_by_s: float = 60.0
    session_ttl_s: float | None = None
    outages: list[Outage] = field(default_factory=list)

    @property
    def disturbs_requests(self) -> bool:
        return bool(self.error_rate or self.drop_rate or self.latency_s or self.outages)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"seed": self.seed, "outages": [o.to_json() for o in self.outages]}
        for name, attr in (*PROBABILITIES.items(), *SECONDS.items()):
            body[name] = getattr(self, attr)
        return body


def parse(spec: str, now: dt.datetime) -> Settings:
    """Settings from a SPEC string; ValueError naming the switch and the fix on bad input."""
    settings = Settings()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in SWITCHES:
            # A start-up error read by the person who typed the switches: in their language (issue #14)
            raise ValueError(_("fault switch {item!r} is not known; use NAME=VALUE with NAME one of {names} "
                               "(README: Simulator fault switches)", item=item, names=", ".join(SWITCHES)))
        if name == "seed":
            settings.seed = _number(name, value, int)
        elif name == "outage":
            settings.outages.append(_outage(value, now))
        elif name in PROBABILITIES:
            share = _number(name, value, float)
            if not 0.0 <= share <= 1.0:
                raise ValueError(_("fault switch {name}={value}: a share must be between 0 and 1 (e.g. 0.1 for "
                                   "one request in ten)", name=name, value=value))
            setattr(settings, PROBABILITIES[name], share)
        else:
            seconds = _number(name, value, float)
            if seconds < 0:
                raise ValueError(_("fault switch {name}={value}: seconds cannot be negative", name=name,
                                   value=value))
            setattr(settings, SECONDS[name], seconds)
    return settings


def _number(name: str, value: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        expected = _("a whole number") if kind is int else _("a number (e.g. 0.5)")
        raise ValueError(_("fault switch {name}={value!r}: expected {expected}", name=name, value=value,
                           expected=expected)) from None


def _outage(value: str, now: dt.datetime) -> Outage:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(_("fault switch outage={value!r}: expected START:DURATION[:KIND] in seconds, "
                           "e.g. outage=0:600:MAINTENANCE", value=value))
    start, duration = (_number("outage", p, float) for p in parts[:2])
    kind = parts[2].strip().upper() if len(parts) == 3 else "FAILURE"
    if kind not in KINDS or duration <= 0:
        raise ValueError(_("fault switch outage={value!r}: KIND must be one of {kinds} and DURATION positive",
                           value=value, kinds=", ".join(KINDS)))
    begin = now + dt.timedelta(seconds=start)
    return Outage(begin, begin + dt.timedelta(seconds=duration), kind, published=min(now, begin))


class FaultState:
    """The switches in force, their random generator and the sessions made unavailable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.unavailable: set[str] = set()

    def chance(self, share: float) -> bool:
        return share > 0 and self.rng.random() < share

    def outage_at(self, now: dt.datetime, *, blocking: bool = False) -> Outage | None:
        """The most severe outage in force (`blocking`: only those that make /v2 answer 503)."""
        active = [o for o in self.settings.outages if o.start <= now < o.end and (o.blocks_api or not blocking)]
        return max(active, key=lambda o: SEVERITY[o.kind]) if active else None


def install(world: World) -> FaultState:
    """Parse SimConfig.faults (at application start: a bad SPEC stops the start with its message)."""
    found = FaultState(parse(world.config.faults, world.clock.now()))
    world.services["faults"] = found
    return found


def state(world: World) -> FaultState:
    found: FaultState | None = world.services.get("faults")
    return found if found is not None else install(world)


def replace(world: World, settings: Settings) -> FaultState:
    found = FaultState(settings)
    world.services["faults"] = found
    return found


# hooks for the route modules ---------------------------------------------------------------------

def session_unavailable(world: World, session_reference: str) -> bool:
    """True when a send into this online session must get 400 21184 (online.py asks before accepting)."""
    current = state(world)
    if session_reference in current.unavailable:
        return True
    if current.chance(current.settings.unavailable_rate):
        current.unavailable.add(session_reference)
        return True
    return False


def session_ttl_s(world: World, default: float) -> float:
    ttl = state(world).settings.session_ttl_s
    return default if ttl is None else ttl


async def delay_upo(world: World) -> None:
    """Wait until the simulator clock passes now + upo_delay (a ManualClock: until a test moves it)."""
    delay = state(world).settings.upo_delay_s
    if delay > 0:
        await waiting.until(world, world.clock.now() + dt.timedelta(seconds=delay))


def visible_from(world: World, record: dict[str, Any]) -> dt.datetime | None:
    """When an accepted invoice becomes readable (its permanentStorageDate, or later when it is one of
    the `late` share); None for an invoice without a permanentStorageDate."""
    stored = record.get("permanentStorageDate")
    if not stored:
        return None
    when = parse_iso(stored)
    settings = state(world).settings
    if settings.late_rate > 0:
        # Decided per invoice from the seed and its KSeF number, so every query agrees about it.
        digest = hashlib.sha256(f"{settings.seed}|{record.get('ksefNumber')}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < settings.late_rate:
            when += dt.timedelta(seconds=settings.late_by_s)
    return when


# the middleware ---------------------------------------------------------------------------------------

CDN_PAGE = ("<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\n<body>\n"
            "<h1>{reason}</h1>\n<p>The server is temporarily unable to service your request. "
            "Please try again later.</p>\n<hr><address>Reference #{ref}</address>\n</body></html>\n")
REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _server_error(current: FaultState) -> web.Response:
    status = current.rng.choice((500, 502, 503, 504))
    headers = {"X-Sim-Fault": "5xx"}
    if current.chance(current.settings.html_share):
        page = CDN_PAGE.format(status=status, reason=REASONS[status], ref=f"{current.rng.getrandbits(48):012x}")
        return web.Response(status=status, text=page, content_type="text/html", headers=headers)
    if current.rng.random() < 0.5:
        return web.Response(status=status, headers=headers)
    body = {"title": REASONS[status], "status": status, "detail": "Simulated server error."}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/problem+json",
                        headers=headers)


def _outage_response(outage: Outage, now: dt.datetime) -> web.Response:
    retry = max(1, int((outage.end - now).total_seconds() + 0.999))
    page = CDN_PAGE.format(status=503, reason=REASONS[503], ref=outage.kind.lower())
    return web.Response(status=503, text=page, content_type="text/html",
                        headers={"X-Sim-Fault": "outage", "Retry-After": str(retry)})


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith(API_PREFIX + "/")
    if not (api or request.path.startswith(STORAGE_PREFIX)):
        return await handler(request)
    world = request.app[WORLD]
    current = state(world)
    settings = current.settings
    if not settings.disturbs_requests:
        return await handler(request)
    now = world.clock.now()
    outage = current.outage_at(now, blocking=True) if api else None
    if outage is not None:
        return _outage_response(outage, now)
    if settings.latency_s and current.chance(settings.latency_share):
        await asyncio.sleep(settings.latency_s)
    if current.chance(settings.error_rate):
        return _server_error(current)
    response = await handler(request)
    if current.chance(settings.drop_rate) and request.transport is not None:
        request.transport.close()     # processed, but the client never hears the answer
        response.headers["X-Sim-Fault"] = "drop"
    return response
