"""The simulator's aiohttp application: routes under /v2, error rendering, background work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from . import (
    auth,
    batch,
    certificates,
    connections,
    control,
    exports,
    fa3,
    faults,
    limits,
    online,
    permission_queries,
    ratelimits,
    receiving,
    sessions_query,
    testdata,
    tokens,
)
from .clock import Clock, SystemClock, iso
from .config import SimConfig
from .errors import ApiError, KsefException
from .spec import API_PREFIX
from .store import Store
from .world import WORLD, World

log = structlog.get_logger("ksefd.sim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each module registers its own routes; order matters only for readability.
ROUTE_MODULES = (auth, tokens, testdata, online, sessions_query, batch, receiving, exports, limits, certificates,
                 control, connections, permission_queries)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    world = request.app[WORLD]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.render(request, iso(world.clock.now()))
    except web.HTTPException as exc:
        if exc.status in (404, 405) and request.path.startswith(API_PREFIX):
            # KSeF has no 404 for unknown paths' parameters; unknown routes are a client bug: say so.
            response = KsefException(21405, [f"Nieznana operacja: {request.method} {request.path}"]).render(
                request, iso(world.clock.now()))
            response.set_status(exc.status)
        else:
            raise
    warning = request.headers.get("X-Test-System-Warning")
    if warning and world.config.environment == "TE":
        response.headers["X-System-Warning"] = warning   # TEST echoes it (PROTOCOL.md §11)
    return response


async def public_key_certificates(request: web.Request) -> web.Response:
    """GET /security/public-key-certificates (PROTOCOL.md §2.1)."""
    return web.json_response(request.app[WORLD].keys.published())


def create_app(config: SimConfig | None = None, clock: Clock | None = None) -> web.Application:
    config = config or SimConfig()
    fa3.schema()   # compile now, before requests run parses in other threads (fa3.py docstring)
    world = World(config, clock or SystemClock(), Store(config.state_path))
    # Tests insert their own middlewares right inside the error middleware (index 1): it stays first.
    app = web.Application(middlewares=[error_middleware, connections.middleware, faults.middleware,
                                       ratelimits.middleware],
                          client_max_size=200 * 1024 * 1024)
    app[WORLD] = world
    app.router.add_get(f"{API_PREFIX}/security/public-key-certificates", public_key_certificates)
    for module in ROUTE_MODULES:
        module.register(app)

    async def on_cleanup(_: web.Application) -> None:
        await world.shutdown()

    app.on_cleanup.append(on_cleanup)
    return app


async def serve(config: SimConfig, stop: asyncio.Event, ready: Callable[[str], Any] | None = None) -> None:
    """Run until `stop` is set; `ready` gets the base URL (…/v2) once the port is bound."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    for address in runner.addresses:   # the port actually bound when config.port is 0
        port = int(address[1])
        break
    base_url = f"http://{config.host}:{port}{API_PREFIX}"
    log.info("sim.started", base_url=base_url, state=str(config.state_path) if config.state_path else "memory")
    if ready is not None:
        ready(base_url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("sim.stopped")


def dumps(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False)
