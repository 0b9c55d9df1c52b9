"""No secret leaves where the user put it (issue #12 point 5 of "Done means"): a full run of a real `ksefd run`
(debug log level, JSON lines) with a token company that sends and receives and a certificate company with an
encrypted key, then every byte it wrote is searched (its log, the state database with its WAL, every file
under data_dir), with `ksefd status` (text and JSON), /metrics, /healthz, /readyz and the status pages:
neither the KSeF token, nor the key's password, nor the private key, nor any access, refresh or authentication
token KSeF handed out may appear."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from ksefd.ksef import key_files
from ksefd.sim.app import create_app
from ksefd.sim.clock import SystemClock
from ksefd.sim.config import SimConfig
from tests.daemon.support import OTHER, ROOT, SELLER, drop, invoice, load, token_file, write_config
from tests.service.http_support import free_port, scrape, value, wait_until
from tests.support.ksef_auth import self_signed_certificate

PASSWORD = "Tajne-Hasło-klucza-2026!"
JWT_FIELDS = ("accessToken", "refreshToken", "authenticationToken")


@pytest.fixture
async def recording_sim() -> AsyncIterator[tuple[str, list[str]]]:
    """The simulator, with a middleware that keeps every token it hands out (the test's own copy)."""
    handed_out: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response) and response.content_type == "application/json" and response.body:
            _collect(json.loads(bytes(response.body)), handed_out)   # type: ignore[arg-type]
        return response

    app = create_app(SimConfig(limits_profile="off", hwm_lag_s=0.5), SystemClock())
    app.middlewares.append(record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/v2", handed_out
    await server.close()


def _collect(body: Any, found: list[str]) -> None:
    if isinstance(body, dict):
        for key, item in body.items():
            if key in JWT_FIELDS:
                token = item.get("token") if isinstance(item, dict) else item
                if isinstance(token, str):
                    found.append(token)
            else:
                _collect(item, found)
    elif isinstance(body, list):
        for item in body:
            _collect(item, found)


def written(folder: Path, data_dir: Path) -> dict[str, bytes]:
    """Every file the daemon writes: the state database (with -wal/-shm) and everything under data_dir."""
    paths = [*folder.glob("state.sqlite3*"), *(p for p in data_dir.rglob("*") if p.is_file())]
    return {str(p): p.read_bytes() for p in paths}


def certificate_company(folder: Path) -> tuple[dict[str, str], str]:
    cert, key = self_signed_certificate(nip=OTHER, key_type="ec",
                                        valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    (folder / "jan.pass").write_text(PASSWORD + "\n", encoding="utf-8")
    key_files.write_key(folder / "jan.key", key, PASSWORD.encode())
    key_files.write_certificate(folder / "jan.crt", cert)
    plain_key = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    return ({"certificate": str(folder / "jan.crt"), "private_key": str(folder / "jan.key"),
             "private_key_password_file": str(folder / "jan.pass")}, plain_key.hex())


async def test_a_full_run_leaks_no_secret(recording_sim: tuple[str, list[str]], http: aiohttp.ClientSession,
                                          tmp_path: Path) -> None:
    base_url, handed_out = recording_sim
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    token_path = await token_file(http, base_url, secrets_dir, SELLER)
    token = token_path.read_text(encoding="utf-8").strip()
    certificate, plain_key_hex = certificate_company(secrets_dir)
    port = free_port()
    config = load(write_config(tmp_path, base_url, [
        {"name": "acme", "nip": SELLER, "token_file": str(token_path), "receive": True},
        {"name": "beta", "nip": OTHER, **certificate}], daemon={"http": f"127.0.0.1:{port}", "log_level": "debug"}))
    drop(config.company("acme").folders.outbox, "FV-1.xml", invoice("FV/1", buyer=OTHER))   # beta receives it
    drop(config.company("acme").folders.outbox, "FV-2.xml", invoice("FV/2", seller=OTHER))  # rejected locally
    drop(config.company("beta").folders.outbox, "B-1.xml", invoice("B/1", seller=OTHER))
    log = tmp_path / "daemon.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as handle:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "-c", str(config.source), cwd=ROOT,
            stdout=handle, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: list[str] = []
    try:
        async def finished() -> bool:
            try:
                text, now = await scrape(http, url)
            except (aiohttp.ClientError, AssertionError):
                return False
            seen[:] = [text]
            return (value(now, "ksefd_invoices_accepted_total", company="acme") == 1
                    and value(now, "ksefd_invoices_rejected_total", company="acme") == 1
                    and value(now, "ksefd_invoices_accepted_total", company="beta") == 1
                    and ("ksefd_inbox_lag_seconds", (("company", "acme"), ("subject_type", "Subject2"))) in now)

        await wait_until(finished, "both companies' invoices accepted, acme's inbox past its first export", limit=60)
        for path in ("/healthz", "/readyz", "/", "/company/acme", "/company/beta"):
            async with http.get(url + path) as response:
                seen.append(await response.text())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    for extra in ((), ("--json",)):
        status = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "status", "-c",
                                                      str(config.source), *extra, cwd=ROOT,
                                                      stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(status.communicate(), 60)
        seen.append(out.decode())

    assert len(handed_out) >= 4, "the simulator handed out no tokens: the run did not log in"
    secrets = {"the KSeF token": token, "the KSeF token's secret part": token.rsplit("|", 1)[1],
               "the key password": PASSWORD, "the private key": plain_key_hex}
    secrets |= {f"a token KSeF handed out ({t[:12]}...)": t for t in handed_out}
    secrets |= {f"the signature of a token KSeF handed out ({t[:12]}...)": t.rsplit(".", 1)[-1]
                for t in handed_out if t.count(".") == 2}
    places = {f"output {i}": text.encode() for i, text in enumerate(seen)}
    places["the daemon's log"] = log.read_bytes()
    places |= await asyncio.to_thread(written, tmp_path, config.data_dir)
    assert b'"outbox.accepted"' in places["the daemon's log"]
    leaks = [f"{what} in {where}" for what, secret in secrets.items() for where, data in places.items()
             if secret.encode() in data or secret.encode("utf-16-le") in data or
             (what == "the private key" and bytes.fromhex(secret) in data)]
    assert not leaks, leaks
