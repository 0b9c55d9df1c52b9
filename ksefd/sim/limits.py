"""Limits endpoints (PROTOCOL.md §7, §11, §14.5): the effective rate limits of the caller's context and
the TEST-only ways to change them, the per-context session limits and their TEST overrides, and the
subject's certificate limits.

Session limits set with POST /testdata/limits/context/session are stored in table `context_limits`
keyed by the context value, as `{"onlineSession": {maxInvoiceSizeInMB, maxInvoiceWithAttachmentSizeInMB,
maxInvoices}, "batchSession": {...}, "collectiveIdentifier": {maxInvoices}}`; online and batch sessions
read them through `sessions.limits`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import certificate_store, ratelimits, sessions
from .spec import API_PREFIX, json_body
from .world import WORLD, World

CONTEXT_LIMITS = "context_limits"
COLLECTIVE_DEFAULT = {"maxInvoices": 500}          # openapi.json EffectiveContextLimits example, §14.5
SESSION_GROUPS = ("onlineSession", "batchSession")
SESSION_FIELDS = ("maxInvoiceSizeInMB", "maxInvoiceWithAttachmentSizeInMB", "maxInvoices")


def context_limits(world: World, context_value: str) -> dict[str, Any]:
    """The EffectiveContextLimits body: defaults overlaid with the context's stored override."""
    stored = world.store.get(CONTEXT_LIMITS, context_value) or {}
    body: dict[str, Any] = {}
    for group in SESSION_GROUPS:
        body[group] = {**sessions.DEFAULT_LIMITS[group], **(stored.get(group) or {})}
    body["collectiveIdentifier"] = {**COLLECTIVE_DEFAULT, **(stored.get("collectiveIdentifier") or {})}
    return body


async def get_rate_limits(request: web.Request) -> web.Response:
    """GET /rate-limits: all 17 groups (EffectiveApiRateLimits, §14.5)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    return web.json_response(ratelimits.effective_limits(world, caller.context_value))


async def set_rate_limits(request: web.Request) -> web.Response:
    """POST /testdata/rate-limits: the 13 groups of ApiRateLimitsOverride; the close, anonymous and global
    groups cannot be overridden (§14.5), so other keys are ignored like any unknown property."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await json_body(request)
    chosen = {group: {name: int(body["rateLimits"][group][name]) for name in ("perSecond", "perMinute", "perHour")}
              for group in ratelimits.OVERRIDABLE}
    world.store.put(ratelimits.OVERRIDES, caller.context_value, {"rateLimits": chosen})
    return web.Response(status=200)


async def set_production_rate_limits(request: web.Request) -> web.Response:
    """POST /testdata/rate-limits/production: PRD numbers for this context, whatever the profile."""
    world = request.app[WORLD]
    caller = world.caller(request)
    chosen = {group: dict(values) for group, values in ratelimits.PRODUCTION.items()
              if group not in (ratelimits.ANONYMOUS, "global")}     # those two are per IP, not per context
    world.store.put(ratelimits.OVERRIDES, caller.context_value, {"rateLimits": chosen})
    return web.Response(status=200)


async def reset_rate_limits(request: web.Request) -> web.Response:
    """DELETE /testdata/rate-limits: back to the simulator's profile."""
    world = request.app[WORLD]
    caller = world.caller(request)
    world.store.delete(ratelimits.OVERRIDES, caller.context_value)
    return web.Response(status=200)


async def get_context_limits(request: web.Request) -> web.Response:
    """GET /limits/context (EffectiveContextLimits; collectiveIdentifier since 2.7.1)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    return web.json_response(context_limits(world, caller.context_value))


async def set_session_limits(request: web.Request) -> web.Response:
    """POST /testdata/limits/context/session (SetSessionLimitsRequest; collectiveIdentifier required, §14.5)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await json_body(request)
    record: dict[str, Any] = {group: {name: int(body[group][name]) for name in SESSION_FIELDS}
                              for group in SESSION_GROUPS}
    record["collectiveIdentifier"] = {"maxInvoices": int(body["collectiveIdentifier"]["maxInvoices"])}
    world.store.put(CONTEXT_LIMITS, caller.context_value, record)
    return web.Response(status=200)


async def reset_session_limits(request: web.Request) -> web.Response:
    """DELETE /testdata/limits/context/session."""
    world = request.app[WORLD]
    caller = world.caller(request)
    world.store.delete(CONTEXT_LIMITS, caller.context_value)
    return web.Response(status=200)


async def get_subject_limits(request: web.Request) -> web.Response:
    """GET /limits/subject (EffectiveSubjectLimits) for the authenticating subject."""
    world = request.app[WORLD]
    caller = world.caller(request)
    # PROTOCOL.md §7: NIP 300 enrollments / 100 certificates, PESEL or fingerprint 12 / 6; TEST overrides apply.
    enrollments, certificates = certificate_store.subject_limits(world.store, caller.subject_type,
                                                                 caller.subject_value)
    return web.json_response({"enrollment": {"maxEnrollments": enrollments},
                              "certificate": {"maxCertificates": certificates}})


def register(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/rate-limits", get_rate_limits)
    app.router.add_post(f"{API_PREFIX}/testdata/rate-limits", set_rate_limits)
    app.router.add_delete(f"{API_PREFIX}/testdata/rate-limits", reset_rate_limits)
    app.router.add_post(f"{API_PREFIX}/testdata/rate-limits/production", set_production_rate_limits)
    app.router.add_get(f"{API_PREFIX}/limits/context", get_context_limits)
    app.router.add_post(f"{API_PREFIX}/testdata/limits/context/session", set_session_limits)
    app.router.add_delete(f"{API_PREFIX}/testdata/limits/context/session", reset_session_limits)
    app.router.add_get(f"{API_PREFIX}/limits/subject", get_subject_limits)
