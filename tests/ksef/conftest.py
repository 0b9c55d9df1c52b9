"""Fixtures of the client tests: clients on the simulator, closed at teardown, and contexts logged in the way a
user does it (a KSeF token created with POST /tokens by the tests' own helpers)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import KsefToken
from tests.support.ksef_auth import create_ksef_token

SELLER_NIP = "9999999999"          # Podmiot1 of the official sample FA_3_Przyklad_1.xml
FAST_AUTH = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


@pytest.fixture
async def ksef_clients() -> AsyncIterator[Callable[..., KsefClient]]:
    """`ksef_clients(base_url, **KsefClient options)`: a client with quick auth polling (closed at teardown)."""
    made: list[KsefClient] = []

    def make(base_url: str, **options: Any) -> KsefClient:
        options.setdefault("auth_options", FAST_AUTH)
        client = KsefClient(options.pop("env", "test"), base_url=base_url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def token_context(http: aiohttp.ClientSession, ksef_clients: Callable[..., KsefClient]
                        ) -> Callable[..., Any]:
    """`await token_context(sim, nip=..., permissions=..., **KsefClient options)`: a KsefContext of a fresh
    client, authenticated on first use with a new KSeF token of that NIP (default: the sample's seller)."""

    async def make(sim: Any, *, nip: str = SELLER_NIP, permissions: Sequence[str] = ("InvoiceWrite", "InvoiceRead"),
                   **options: Any) -> KsefContext:
        token = await create_ksef_token(http, sim.base_url, nip, list(permissions))
        return ksef_clients(sim.base_url, **options).context(ContextIdentifier.nip(nip), KsefToken.parse(token))

    return make


@pytest.fixture
def debug_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event, debug included, exactly as the client emitted it: the redaction processor of
    ksefd.logs is not applied, so a secret handed to a logger shows here even though it would be masked later."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as events:
            yield events
    finally:
        structlog.configure(wrapper_class=wrapper)
