"""`ksefd check` against the simulator over real HTTP (issue #12 item 3 and its "Done means")."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from ksefd import i18n
from ksefd.clock import SystemClock
from ksefd.config import Config
from ksefd.daemon.check import run_check, skew_seconds
from ksefd.daemon.check_report import CheckReport, CompanyCheck, render, to_json
from ksefd.ksef.environments import Environment
from ksefd.sim.config import SimConfig
from tests.daemon.support import load, token_file, write_config
from tests.support.ksef_auth import self_signed_certificate

SEND_RECEIVE = "1234567802"
READ_ONLY = "1234567819"
NO_WRITE = "1234567825"
EXPIRED = "1234567831"
OWNER_CERT = "1234567848"
PESEL = "15062788702"


@pytest.fixture(autouse=True)
def english() -> Any:
    """These tests read the findings in English (`language = "en"`); Polish, the default: test_check_language.py."""
    with i18n.using("en"):
        yield


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    return await sim_factory(config=SimConfig(limits_profile="off"))


def cert_files(folder: Path, name: str, *, nip: str | None = None, pesel: str | None = None,
               valid_from: dt.datetime | None = None, valid_days: int = 365) -> dict[str, str]:
    cert, key = self_signed_certificate(nip=nip, pesel=pesel, valid_from=valid_from, valid_days=valid_days)
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return {"certificate": str(folder / f"{name}.crt"), "private_key": str(folder / f"{name}.key")}


def token_secrets(folder: Path) -> list[str]:
    return [t.read_text().strip().rsplit("|", 1)[1] for t in folder.glob("*.token")]


def company(report: CheckReport, name: str) -> CompanyCheck:
    return next(c for c in report.companies if c.name == name)


def errors(row: CompanyCheck) -> list[str]:
    return [f"{f.message} | {f.fix}" for f in row.findings if f.level == "error"]


async def four_companies(sim: Any, http: aiohttp.ClientSession, folder: Path) -> Config:
    """The four companies of the issue's "Done means"."""
    full = await token_file(http, sim.base_url, folder, SEND_RECEIVE, ["InvoiceWrite", "InvoiceRead"])
    read = await token_file(http, sim.base_url, folder, READ_ONLY, ["InvoiceRead"])
    no_write = await token_file(http, sim.base_url, folder, NO_WRITE, ["InvoiceRead"])
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired = cert_files(folder, "expired", nip=EXPIRED, valid_from=old, valid_days=365)
    return load(write_config(folder, sim.base_url, [
        {"name": "full", "nip": SEND_RECEIVE, "send": True, "receive": True, "token_file": str(full)},
        {"name": "readonly", "nip": READ_ONLY, "send": False, "receive": True, "token_file": str(read)},
        {"name": "nowrite", "nip": NO_WRITE, "send": True, "receive": True, "token_file": str(no_write)},
        {"name": "expired", "nip": EXPIRED, "send": True, "receive": True, **expired},
    ]))


async def test_the_four_companies_of_the_issue(sim, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    config = await four_companies(sim, http, tmp_path)
    report = await run_check(config)
    assert not report.ok
    assert all(f.level == "ok" for f in report.findings), report.findings

    full = company(report, "full")
    assert full.ok and full.authenticated and full.can_send and full.can_receive, errors(full)
    assert {"InvoiceWrite", "InvoiceRead"} <= set(full.permissions)
    assert full.owner_permissions and "InvoiceWrite" in full.owner_permissions     # the token's author owns it
    # Every company on a token is told that token login ends on 31.12.2026 and what to move to.
    sunset = [f for f in full.findings if f.topic == "expiry"]
    assert sunset and sunset[0].level == "warning" and "31.12.2026" in sunset[0].message
    assert "certificate" in sunset[0].fix and full.expires == "2026-12-31"

    readonly = company(report, "readonly")
    assert readonly.ok and readonly.can_receive and readonly.can_send is False, errors(readonly)
    assert readonly.permissions == ["InvoiceRead"]     # the token's scope, not its author's

    nowrite = company(report, "nowrite")
    assert not nowrite.ok and nowrite.can_send is False and nowrite.can_receive
    [problem] = [f for f in nowrite.findings if f.level == "error"]
    assert problem.topic == "permissions" and "InvoiceWrite" in problem.message
    assert "generate a new token" in problem.fix and "InvoiceWrite" in problem.fix and "send = false" in problem.fix

    expired = company(report, "expired")
    assert not expired.ok and not expired.authenticated and expired.days_left is not None and expired.days_left < 0
    [problem] = [f for f in expired.findings if f.level == "error"]
    assert problem.topic == "expiry" and "expired on" in problem.message
    assert "new KSeF certificate" in problem.fix

    text = render(report)
    secrets = token_secrets(tmp_path)
    assert len(secrets) == 3
    for secret in secrets:                          # no token secret in the report, text or JSON
        assert secret not in text and secret not in json.dumps(to_json(report))
    for line in ("full", "readonly", "nowrite", "expired", "FAIL", "fix: "):
        assert line in text
    assert "some companies cannot do what their config asks" in text


async def ksefd(*args: str) -> tuple[int, str]:
    """`ksefd ARGS` as a real process (as an operator runs it), while the simulator runs in this loop."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", *args, stdout=PIPE, stderr=PIPE,
                                                   stdin=DEVNULL)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8")


async def test_cli_exit_code_and_json(sim, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    config = await four_companies(sim, http, tmp_path)
    args = ["check", "-c", str(config.source), "--json"]
    code, out = await ksefd(*args, "full", "readonly")
    body = json.loads(out)
    assert code == 0 and body["ok"] is True and [c["name"] for c in body["companies"]] == ["full", "readonly"]
    assert body["companies"][0]["can_send"] is True
    code, out = await ksefd(*args, "nowrite")
    body = json.loads(out)
    assert code == 1 and body["ok"] is False and body["companies"][0]["findings"][-1]["fix"]
    code, out = await ksefd("check", "-c", str(config.source), "nobody")
    assert code == 1 and "nie ma firmy 'nobody'" in out          # the config's language: Polish by default


async def test_certificate_owner_and_expiry_warning(sim, tmp_path: Path) -> None:
    files = cert_files(tmp_path, "owner", nip=OWNER_CERT, valid_days=30)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "cert", "nip": OWNER_CERT, "receive": True,
                                                         **files}]))
    row = company(await run_check(config), "cert")
    assert row.ok and row.can_send and row.can_receive, errors(row)
    assert row.credential == "certificate" and row.identity == f"certificate Nip {OWNER_CERT}"
    assert row.owner_permissions and "InvoiceRead" in row.owner_permissions
    [warning] = [f for f in row.findings if f.level == "warning"]
    assert warning.topic == "expiry" and "expires on" in warning.message and row.days_left in (29, 30)


async def test_a_person_without_invoice_write_is_told_to_ask_the_owner(sim, http: aiohttp.ClientSession,
                                                                         tmp_path: Path) -> None:
    grant = {"contextIdentifier": {"type": "Nip", "value": OWNER_CERT},
             "authorizedIdentifier": {"type": "Pesel", "value": PESEL},
             "permissions": [{"permissionType": "InvoiceRead", "description": "odczyt faktur"}]}
    async with http.post(f"{sim.base_url}/testdata/permissions", json=grant) as resp:
        assert resp.status == 200
    files = cert_files(tmp_path, "person", pesel=PESEL)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "biuro", "nip": OWNER_CERT, "receive": True,
                                                         **files}]))
    row = company(await run_check(config), "biuro")
    assert not row.ok and row.can_receive and row.can_send is False
    assert row.permissions == ["InvoiceRead"] and row.owner_permissions is None
    [problem] = [f for f in row.findings if f.level == "error"]
    assert "owner of NIP" in problem.fix and "InvoiceWrite" in problem.fix


async def test_a_token_of_another_nip_is_caught_before_login(sim, http: aiohttp.ClientSession,
                                                              tmp_path: Path) -> None:
    other = await token_file(http, sim.base_url, tmp_path, READ_ONLY, ["InvoiceRead"])
    config = load(write_config(tmp_path, sim.base_url, [{"name": "mixed", "nip": SEND_RECEIVE,
                                                         "token_file": str(other)}]))
    row = company(await run_check(config), "mixed")
    assert not row.ok and not row.authenticated
    assert any(f"issued for nip-{READ_ONLY}" in e for e in errors(row))


async def test_unreachable_ksef_fails_every_company(tmp_path: Path) -> None:
    (tmp_path / "t.token").write_text("20251010-EC-0123456789-0123456789-AB|nip-1234567802|" + "a" * 64)
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "a", "nip": SEND_RECEIVE,
                                                                     "token_file": str(tmp_path / "t.token")}]))
    report = await run_check(config)
    assert not report.ok
    assert any(f.topic == "ksef" and f.level == "error" and "does not answer" in f.message for f in report.findings)
    assert any("KSeF does not answer" in e for e in errors(company(report, "a")))


async def test_folders_and_state_db(sim, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    token = await token_file(http, sim.base_url, tmp_path, SEND_RECEIVE, ["InvoiceWrite", "InvoiceRead"])
    (tmp_path / "blocker").write_text("a file where a folder should be")
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SEND_RECEIVE, "token_file": str(token),
                                                         "outbox": str(tmp_path / "blocker" / "out")}]))
    report = await run_check(config)
    assert any(f.topic == "state_db" and "does not exist yet" in f.message for f in report.findings)
    row = company(report, "acme")
    assert not row.ok and any("outbox:" in e and "cannot be created" in e for e in errors(row))

    config.state_db.write_bytes(b"this is not a database" * 100)
    report = await run_check(config)
    assert any(f.topic == "state_db" and f.level == "error" for f in report.findings)


async def test_an_existing_state_db_is_opened_read_only(tmp_path: Path) -> None:
    from ksefd.store import Store
    (tmp_path / "t.token").write_text("20251010-EC-0123456789-0123456789-AB|nip-1234567802|" + "a" * 64)
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "a", "nip": SEND_RECEIVE,
                                                                     "token_file": str(tmp_path / "t.token")}]))
    async with await Store.open(config.state_db):
        pass
    before = config.state_db.stat().st_mtime_ns
    report = await run_check(config)
    assert any(f.topic == "state_db" and f.level == "ok" and "opens" in f.message for f in report.findings)
    assert config.state_db.stat().st_mtime_ns == before


def test_skew_from_the_date_header() -> None:
    before = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
    after = before + dt.timedelta(seconds=2)
    assert skew_seconds("Sun, 06 Dec 2026 12:01:01 GMT", before, after) == 60.0
    assert skew_seconds("Sun, 06 Dec 2026 11:59:01 GMT", before, after) == -60.0
    assert skew_seconds("nonsense", before, after) is None
    assert skew_seconds("", before, after) is None


class _ShiftedClock(SystemClock):
    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(minutes=5)


async def test_a_clock_five_minutes_ahead_is_reported(sim, tmp_path: Path) -> None:
    (tmp_path / "t.token").write_text("20251010-EC-0123456789-0123456789-AB|nip-1234567802|" + "a" * 64)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "a", "nip": SEND_RECEIVE,
                                                         "token_file": str(tmp_path / "t.token")}]))
    report = await run_check(config, clock=_ShiftedClock())
    [skew] = [f for f in report.findings if f.topic == "clock"]
    assert skew.level == "warning" and "ahead of KSeF" in skew.message and "timedatectl" in skew.fix


@pytest.fixture
async def latarnia() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Latarnia is not part of the simulator: a stand-in answering GET /status as PROTOCOL.md §1 describes."""
    state: dict[str, Any] = {"status": "AVAILABLE", "messages": []}

    async def status(_: web.Request) -> web.Response:
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/status", status)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", state
    await server.close()


async def test_latarnia_status_is_reported(sim, tmp_path: Path, latarnia: tuple[str, dict[str, Any]]) -> None:
    url, state = latarnia
    (tmp_path / "t.token").write_text("20251010-EC-0123456789-0123456789-AB|nip-1234567802|" + "a" * 64)
    config = load(write_config(tmp_path, sim.base_url, [{"name": "a", "nip": SEND_RECEIVE,
                                                         "token_file": str(tmp_path / "t.token")}]))

    def status_url(_: Environment) -> str:
        return url

    report = await run_check(config, status_url=status_url)
    assert [f.level for f in report.findings if f.topic == "latarnia"] == ["ok"]
    state.update(status="FAILURE", messages=[{"title": "Awaria KSeF"}])
    report = await run_check(config, status_url=status_url)
    [found] = [f for f in report.findings if f.topic == "latarnia"]
    assert found.level == "warning" and "FAILURE" in found.message and "Awaria KSeF" in found.message
    assert to_json(report)["findings"]


def test_a_self_signed_certificate_on_prod_is_told_apart_before_any_login(tmp_path: Path) -> None:
    from ksefd.daemon.check_local import check_credentials
    files = cert_files(tmp_path, "self", nip=OWNER_CERT)
    (tmp_path / "ksefd.toml").write_text(
        '[ksef]\nenvironment = "prod"\n\n[daemon]\ndata_dir = "data"\n\n[[companies]]\nname = "p"\n'
        f'nip = "{OWNER_CERT}"\ncertificate = "{files["certificate"]}"\nprivate_key = "{files["private_key"]}"\n')
    config = load(tmp_path / "ksefd.toml")
    row = CompanyCheck("p", OWNER_CERT, "prod", True, True, "certificate")
    assert check_credentials(row, config.company("p"), dt.date.today()) is None
    assert "works only on KSeF TEST" in errors(row)[0] and "PROD" in errors(row)[0]
