"""A running daemon with its HTTP endpoint against the simulator: one company that sends, one whose token
lacks InvoiceWrite (it goes on hold), and helpers to read /metrics with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ksefd.config import Config
from ksefd.daemon.service import serve
from ksefd.sim.config import SimConfig
from tests.daemon.support import OTHER, READ_ONLY, SELLER, load, token_file, write_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    url: str
    config: Config
    sim: Any
    token: Path
    readonly_token: Path


@contextlib.asynccontextmanager
async def running_daemon(sim_factory: Callable[..., Awaitable[Any]], http: aiohttp.ClientSession,
                         folder: Path) -> AsyncIterator[Running]:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, folder, SELLER)
    readonly = await token_file(http, sim.base_url, folder, OTHER, READ_ONLY)
    port = free_port()
    config = load(write_config(folder, sim.base_url, [
        {"name": "acme", "nip": SELLER, "token_file": str(token)},
        {"name": "readonly", "nip": OTHER, "token_file": str(readonly)}],
        daemon={"http": f"127.0.0.1:{port}"}, sending={"hold_retry_seconds": 600}))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _answers(http, f"{url}/healthz"), "the endpoint to listen")
        yield Running(url, config, sim, token, readonly)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                          float]]:
    """/metrics parsed by prometheus-client: (text, {(sample name, sorted labels): value})."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    return sum(v for (n, found), v in samples.items()
               if n == name and all((k, w) in found for k, w in labels.items()))
