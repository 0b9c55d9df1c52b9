"""Everything one running simulator knows, shared by the route modules through `request.app[WORLD]`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from . import spec
from .clock import Clock
from .config import SimConfig
from .errors import Unauthorized
from .ippolicy import check_client_ip
from .keys import KeyRing
from .security import Caller, TokenIssuer, bearer, caller_from, require_permissions
from .store import Store


class World:
    def __init__(self, config: SimConfig, clock: Clock, store: Store) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.keys = KeyRing(store, clock)
        self.tokens = TokenIssuer(store, clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Route modules keep their own services here (e.g. "sessions", "ratelimits").
        self.services: dict[str, Any] = {}

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work (invoice processing, UPO generation) owned by the simulator."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()

    def caller(self, request: web.Request, any_of: list[str] | None = None) -> Caller:
        """Verify the access token and the operation's required permissions (spec's
        `x-required-permissions` unless `any_of` is given), then the operation's path, query and header
        parameters (21405): KSeF authorises before it validates the request (401, then 403, then 400)."""
        payload = self.tokens.verify(bearer(request), "ContextToken")
        session = self.store.get("auth_operations", payload["auth-ref"])
        if session is None:
            raise Unauthorized("Sesja uwierzytelnienia nie istnieje.")
        caller = caller_from(payload, request)
        check_client_ip(payload.get("allowed-ips"), caller.client_ip)
        require_permissions(caller, spec.required_permissions(request) if any_of is None else any_of)
        spec.check_parameters(request)
        return caller


WORLD = web.AppKey("world", World)
