"""Helpers for daemon tests: a config file pointing at the simulator, real KSeF tokens minted the way a
user gets them (tests/support/ksef_auth.py), invoices made from the official samples, and a drain-mode run
of `serve` with a time limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from ksefd.clock import Clock, warsaw_date
from ksefd.config import Config, load_config
from ksefd.daemon.service import serve
from ksefd.samples import make_invoice, sample_bytes
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.support.ksef_auth import create_ksef_token

SELLER = "9999999999"        # the official samples' seller
BUYER = "1111111111"
OTHER = "5265877635"         # a third checksum-valid NIP
WRITE = ["InvoiceWrite", "InvoiceRead"]
READ_ONLY = ["InvoiceRead"]
FAST_DAEMON = {"settle_seconds": 0, "rescan_interval_seconds": 0.5, "shutdown_grace_seconds": 5}


def today() -> dt.date:
    return warsaw_date(dt.datetime.now(dt.UTC))


def invoice(number: str, *, seller: str = SELLER, buyer: str = BUYER, template: str = "FA_3_Przyklad_1.xml",
            issue_date: dt.date | None = None) -> bytes:
    return make_invoice(sample_bytes(template), number=number, seller_nip=seller, buyer_nip=buyer,
                        issue_date=issue_date or today())


async def token_file(http: aiohttp.ClientSession, base_url: str, folder: Path, nip: str,
                     permissions: list[str] | None = None) -> Path:
    token = await create_ksef_token(http, base_url, nip, permissions or WRITE)
    path = folder / f"{nip}-{'-'.join(permissions or WRITE)}.token"
    path.write_text(token + "\n", encoding="utf-8")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(folder: Path, base_url: str, companies: Iterable[dict[str, Any]], *,
                 sending: dict[str, Any] | None = None, daemon: dict[str, Any] | None = None,
                 ksef: dict[str, Any] | None = None) -> Path:
    lines = ["[ksef]", 'environment = "test"', f"base_url = {_toml_value(base_url)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in (ksef or {}).items()]
    lines += ["", "[daemon]", 'data_dir = "data"', 'state_db = "state.sqlite3"']
    lines += [f"{k} = {_toml_value(v)}" for k, v in {**FAST_DAEMON, **(daemon or {})}.items()]
    sending = {"retry_min_seconds": 1, "retry_max_seconds": 4, "hold_retry_seconds": 5,
               "online_idle_close_seconds": 1, **(sending or {})}
    lines += ["", "[sending]"] + [f"{k} = {_toml_value(v)}" for k, v in sending.items()]
    for company in companies:
        lines += ["", "[[companies]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in {"receive": False, **company}.items()]
    path = folder / "ksefd.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> Config:
    return load_config(path)


async def one_company(sim_factory: Any, http: aiohttp.ClientSession, folder: Path, *, name: str = "acme",
                      nip: str = SELLER, permissions: list[str] | None = None,
                      **sending: Any) -> tuple[Any, Path, Config]:
    """A simulator without rate limits and the config of one company whose token file holds a real KSeF
    token (`sending` overrides [sending] options); returns the simulator, the token file and the config."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, folder, nip, permissions)
    config = load(write_config(folder, sim.base_url, [{"name": name, "nip": nip, "token_file": str(token)}],
                               sending=sending or None))
    return sim, token, config


async def drain(config: Config, *, clock: Clock | None = None, limit: float = 60.0) -> None:
    """Run the daemon in drain mode until nothing is left to do (fails the test after `limit` seconds)."""
    async with asyncio.timeout(limit):
        await serve(config, asyncio.Event(), clock=clock, once=True)


def drop(outbox: Path, name: str, data: bytes) -> Path:
    """Drop a file the way a careful ERP does: write a temporary name, then rename."""
    outbox.mkdir(parents=True, exist_ok=True)
    temp = outbox / f"{name}.tmp"
    temp.write_bytes(data)
    final = outbox / name
    temp.rename(final)
    return final


def drop_many(outbox: Path, prefix: str, count: int, number: str) -> None:
    """`count` invoices dropped as `drop` does: files PREFIX00.xml, PREFIX01.xml..., invoice numbers NUMBER/0..."""
    for n in range(count):
        drop(outbox, f"{prefix}{n:02d}.xml", invoice(f"{number}/{n}"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


async def invoice_rows(config: Config, company: str) -> list[Any]:
    async with await Store.open(config.state_db) as store:
        return await store.invoices.in_state(company, *InvoiceState)


def sim_records(sim: Any) -> list[dict[str, Any]]:
    """Every invoice the simulator received (its own records, not ours)."""
    return list(sim.world.store.values("invoices"))


ROOT = Path(__file__).resolve().parents[2]


async def start_daemon(config: Path, log: Path, *extra: str) -> asyncio.subprocess.Process:
    """`python -m ksefd run -c CONFIG` as a real subprocess, its JSON log appended to `log`."""
    handle = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "-c", str(config), *extra,
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        handle.close()


async def wait_logged(log: Path, event: str, times: int, proc: asyncio.subprocess.Process,
                      limit: float = 20.0) -> None:
    """Wait until `event` appears `times` times in the daemon's JSON log (fails if the process ends first)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.returncode is None:
        if (await asyncio.to_thread(log.read_text, errors="replace")).count(f'"{event}"') >= times:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {event} (x{times}) in the daemon's log; see {log}")
