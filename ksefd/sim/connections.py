"""How clients use their TCP connections: a tally for tests and benchmarks (`GET /sim/connections`), not part
of KSeF.

A client that opens a fresh connection for every request pays a handshake per invoice (and KSeF a TLS
handshake); one that keeps connections alive sends many requests over each. The middleware counts the
connections that carried at least one request, and the requests, overall and per operation (method and
route as openapi.json writes it), e.g. `"POST /v2/sessions/online/{referenceNumber}/invoices": {"connections":
1, "requests": 200, "maxInFlight": 1}`; `maxInFlight` is the most requests of the operation inside the
simulator at one moment (how many a client sends at once). A connection is told apart by its transport
(held weakly: a closed one is forgotten once aiohttp lets it go, and is never counted twice while it lives).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Operation:
    requests: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)


@dataclass
class ConnectionTally:
    requests: int = 0
    connections: int = 0
    seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    operations: dict[str, _Operation] = field(default_factory=dict)

    def count(self, transport: Any, operation: str) -> _Operation:
        self.requests += 1
        op = self.operations.setdefault(operation, _Operation())
        op.requests += 1
        if transport is None:        # already closed: counted as a request only
            return op
        if transport not in self.seen:
            self.seen.add(transport)
            self.connections += 1
        if transport not in op.seen:
            op.seen.add(transport)
            op.connections += 1
        return op

    def reset(self) -> None:
        self.requests = self.connections = 0
        self.seen = weakref.WeakSet()
        self.operations = {}

    def to_json(self) -> dict[str, Any]:
        return {"connections": self.connections, "requests": self.requests,
                "operations": {name: {"connections": op.connections, "requests": op.requests,
                                      "maxInFlight": op.max_in_flight}
                               for name, op in sorted(self.operations.items())}}


TALLY = web.AppKey("connection_tally", ConnectionTally)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    op = request.app[TALLY].count(request.transport, f"{request.method} {route}")
    op.in_flight += 1
    op.max_in_flight = max(op.max_in_flight, op.in_flight)
    try:
        return await handler(request)
    finally:
        op.in_flight -= 1


async def get_connections(request: web.Request) -> web.Response:
    return web.json_response(request.app[TALLY].to_json())


async def reset_connections(request: web.Request) -> web.Response:
    request.app[TALLY].reset()
    return web.json_response({})


def register(app: web.Application) -> None:
    """The routes; `middleware` is listed by app.py with the others."""
    app[TALLY] = ConnectionTally()
    app.router.add_get("/sim/connections", get_connections)
    app.router.add_delete("/sim/connections", reset_connections)
