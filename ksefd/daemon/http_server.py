"""The daemon's own HTTP endpoint (issue #12 point 5), off unless `[daemon] http = "127.0.0.1:9464"`:

    /healthz          200 while the process runs and its heartbeat in the state database is fresh, else 503
    /readyz           200 when start-up is done and every company is connected to KSeF or on hold (a hold is a
                      documented state: a person must act, `ksefd status` says what), else 503 with who is not
    /metrics          Prometheus text format (metrics.py)
    /                 the status page: every company in one table (status_page.py)
    /company/NAME     one company: queued, held and why, last errors, today's counts

Loopback only (the config refuses another address): the pages have no login. Read-only: GET and HEAD only.
The server stops when the daemon starts draining (systemd's ExecStop, Ctrl+C).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from .connection import CompanyConnection
from .metrics import ConnectionCollector, RequestMetrics, exposition, snapshot
from .runtime import Runtime
from .status import HEARTBEAT_STALE
from .status_page import company_page, index_page

log = structlog.get_logger("ksefd.daemon.http")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HttpEndpoint:
    """Built in `Daemon.start()` (so that the request metrics see the first KSeF call), run as one of its tasks."""

    def __init__(self, runtime: Runtime, connections: Mapping[str, CompanyConnection]) -> None:
        self.runtime = runtime
        self.connections = connections
        self.requests = RequestMetrics(runtime.config)
        for connection in connections.values():
            self.requests.watch(runtime.client_for(connection.company))
        self.address: tuple[str, int] | None = None        # where it listens, once started

    async def run(self, stop: asyncio.Event) -> None:
        config = self.runtime.config
        if config.http is None:
            return
        host, port = config.http
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.index)
        app.router.add_get("/company/{name}", self.company)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0] if runner.addresses else (host, port)   # port 0: the one picked
            self.address = (str(bound[0]), int(bound[1]))
            log.info("http.listening", url=f"http://{_authority(*self.address)}/", metrics="/metrics")
            await stop.wait()
        finally:
            await runner.cleanup()

    # --- probes ---------------------------------------------------------------------------------

    async def company_states(self) -> dict[str, str]:
        """Per company with a connection: "connected", "on hold: CODE" or "connecting"."""
        holds = {h.company: h.code for h in await self.runtime.store.holds.all()}
        states = {}
        for name, connection in self.connections.items():
            if name in holds:
                states[name] = f"on hold: {holds[name]}"
            elif connection.current is not None:
                states[name] = "connected"
            else:
                states[name] = "connecting"
        return states

    async def healthz(self, _request: web.Request) -> web.Response:
        beats = await self.runtime.store.heartbeat.read()
        beat = next((b for b in beats if b.component == "daemon"), None)
        age = (self.runtime.clock.now() - beat.at).total_seconds() if beat is not None else None
        fresh = age is not None and age < HEARTBEAT_STALE.total_seconds()
        return _json(200 if fresh else 503, {"status": "ok" if fresh else "stale heartbeat",
                                              "heartbeatAgeSeconds": None if age is None else round(age, 1)})

    async def readyz(self, _request: web.Request) -> web.Response:
        states = await self.company_states()
        waiting = sorted(name for name, state in states.items() if state == "connecting")
        body: dict[str, Any] = {"status": "ready" if not waiting else "not ready", "companies": states}
        if waiting:
            body["connecting"] = waiting
        return _json(200 if not waiting else 503, body)

    # --- pages ----------------------------------------------------------------------------------

    async def metrics(self, _request: web.Request) -> web.Response:
        runtime = self.runtime
        taken = await snapshot(runtime.store, runtime.config, runtime.clock)
        text = exposition(self.requests, taken, [ConnectionCollector(await self.company_states())])
        return web.Response(body=text, headers={"Content-Type": PROMETHEUS_TEXT})

    async def index(self, _request: web.Request) -> web.Response:
        runtime = self.runtime
        html = await index_page(runtime.store, runtime.config, runtime.clock, await self.company_states())
        return _html(html)

    async def company(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        try:
            company = runtime.config.company(request.match_info["name"])
        except KeyError:
            raise web.HTTPNotFound(text="no such company in the config") from None
        states = await self.company_states()
        html = await company_page(runtime.store, runtime.config, runtime.clock, company,
                                  states.get(company.name, "idle"))
        return _html(html)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def _html(text: str) -> web.Response:
    # The page is ours alone: no script, no frame, no outside resource (defence in depth behind html.escape).
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
