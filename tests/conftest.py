"""Shared fixtures: a real simulator on a loopback port, checked against openapi.json."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ksefd import i18n
from ksefd.sim.app import create_app
from ksefd.sim.clock import ManualClock, SystemClock
from ksefd.sim.config import SimConfig
from tests.support.conformance import Violations, conformance_middleware

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "ksef" / "samples"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sends_invalid_requests: the test sends requests that break the spec "
                                       "on purpose; only responses are checked against openapi.json")


@dataclass
class RunningSim:
    base_url: str          # http://127.0.0.1:PORT/v2
    root_url: str          # http://127.0.0.1:PORT
    server: TestServer
    clock: Any
    violations: Violations

    @property
    def world(self) -> Any:
        from ksefd.sim.world import WORLD
        return self.server.app[WORLD]


@pytest.fixture(autouse=True)
def _language() -> Iterator[None]:
    """Every test starts in the default language (Polish) and leaves the process's language as it found it:
    serve() sets it from the config it runs (issue #14), which must not leak into the next test."""
    with i18n.using(i18n.DEFAULT):
        yield


@pytest.fixture
def english() -> Iterator[None]:
    """For tests that read the daemon's texts in English (the message ids): `pytestmark =
    pytest.mark.usefixtures("english")`; the Polish texts have tests of their own."""
    with i18n.using("en"):
        yield


@pytest.fixture
async def sim_factory(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Start simulators: `await sim_factory(config=..., clock=...)`; all stopped at teardown."""
    started: list[RunningSim] = []

    async def start(config: SimConfig | None = None, clock: Any = None) -> RunningSim:
        violations = Violations()
        app = create_app(config or SimConfig(), clock or SystemClock())
        app.middlewares.insert(0, conformance_middleware(violations))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        root = f"http://127.0.0.1:{server.port}"
        sim = RunningSim(f"{root}/v2", root, server, clock, violations)
        started.append(sim)
        return sim

    yield start
    problems: list[str] = []
    allow_bad_requests = request.node.get_closest_marker("sends_invalid_requests") is not None
    for sim in started:
        await sim.server.close()
        problems += sim.violations.responses
        if not allow_bad_requests:
            problems += sim.violations.requests
    if problems:
        pytest.fail("openapi.json violations:\n" + "\n".join(problems[:20]), pytrace=False)


@pytest.fixture
async def sim(sim_factory: Callable[..., Any]) -> RunningSim:
    """A simulator with the system clock and default settings."""
    result: RunningSim = await sim_factory()
    return result


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(dt.datetime.now(dt.UTC))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
