"""`ksefd check` as an operator runs it (a real `python -m ksefd` process against the simulator over loopback):
Polish by default, English with `language = "en"` (issue #14); the simulator's Latarnia asked with a base_url,
as the daemon asks it (availability.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import i18n
from ksefd.daemon.check import run_check
from tests.daemon.support import load, token_file, write_config
from tests.service.test_check import NO_WRITE, SEND_RECEIVE, ksefd


async def two_companies(sim: Any, http: aiohttp.ClientSession, folder: Path, language: str | None = None) -> Path:
    full = await token_file(http, sim.base_url, folder, SEND_RECEIVE, ["InvoiceWrite", "InvoiceRead"])
    no_write = await token_file(http, sim.base_url, folder, NO_WRITE, ["InvoiceRead"])
    return write_config(folder, sim.base_url, [
        {"name": "pelna", "nip": SEND_RECEIVE, "send": True, "receive": True, "token_file": str(full)},
        {"name": "bez-zapisu", "nip": NO_WRITE, "send": True, "receive": True, "token_file": str(no_write)},
    ], daemon={"language": language} if language else None)


async def test_check_speaks_polish_by_default(sim: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    config = await two_companies(sim, http, tmp_path)
    code, out = await ksefd("check", "-c", str(config))
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0].startswith(f"ksefd check: {config} (") and lines[0].endswith("; czas polski, Europe/Warsaw)")
    assert "." not in lines[0].split("(")[1].split(";")[0].split()[-1]           # no microseconds
    assert f"OK      [KSeF] KSeF TEST pod adresem {sim.base_url} odpowiada" in out
    assert f"OK      [Latarnia] Latarnia ({sim.root_url}): KSeF TEST dostępny" in out
    header = next(line for line in lines if line.startswith("FIRMA"))
    assert header.split() == ["FIRMA", "NIP", "ŚRODOWISKO", "LOGOWANIE", "WAŻNE", "DO", "WYSYŁKA", "ODBIÓR", "WYNIK"]
    assert any(line.startswith("pelna") and "token KSeF" in line and "31.12.2026" in line and "OK, uwagi: 1" in line
               for line in lines)
    assert any(line.startswith("bez-zapisu") and "NIE" in line and line.rstrip().endswith("BŁĄD") for line in lines)
    assert "  BŁĄD    [uprawnienia] send = true w konfiguracji, ale token KSeF " in out
    assert f"nie ma uprawnienia InvoiceWrite (wystawianie faktur) w NIP {NO_WRITE}" in out
    assert "co zrobić: uprawnienia tokenu ustala się przy jego generowaniu" in out
    assert "Aplikacji Podatnika (https://ap-test.ksef.mf.gov.pl/web/)" in out
    assert "albo ustaw send = false dla firmy bez-zapisu, jeśli nie ma wysyłać faktur" in out
    assert "  UWAGA   [ważność] loguje się tokenem KSeF: logowanie tokenem kończy się 31.12.2026" in out
    assert "przenieś tę firmę na certyfikat KSeF" in out
    assert out.rstrip().endswith("zastosuj powyższe poprawki i uruchom ksefd check ponownie")
    for english in ("does not answer", "fix:", "COMPANY", "WARNING", "ERROR", "lacks", "logs in with"):
        assert english not in out, english


async def test_check_in_english_with_language_en(sim: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    config = await two_companies(sim, http, tmp_path, "en")
    code, out = await ksefd("check", "-c", str(config))
    assert code == 1, out
    assert out.splitlines()[0].endswith("; times in Europe/Warsaw)")
    assert f"OK      [latarnia] Latarnia ({sim.root_url}): KSeF TEST available" in out
    assert "COMPANY" in out and "RESULT" in out and "OK, warnings: 1" in out and "FAIL" in out
    assert "  ERROR   [permissions] send = true in the config, but token " in out
    assert "fix: a token's permissions are fixed when it is generated" in out
    assert "; or set send = false for company bez-zapisu if it should not send" in out
    assert "  WARNING [expiry] logs in with a KSeF token: token login ends on 31.12.2026" in out
    assert out.rstrip().endswith("apply the fixes above, then run ksefd check again")
    for polish in ("ą", "ę", "ł", "ś", "ó", "FIRMA", "UWAGA"):
        assert polish not in out, polish
    code, out = await ksefd("check", "-c", str(config), "--json", "pelna")      # the JSON's texts likewise
    body = json.loads(out)
    findings = body["companies"][0]["findings"]
    assert code == 0 and any(f["message"].startswith("logs in with a KSeF token") for f in findings)


async def test_check_asks_the_simulators_latarnia_with_a_base_url(sim: Any, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    config = load(await two_companies(sim, http, tmp_path, "en"))
    with i18n.using("en"):
        report = await run_check(config, ["pelna"])
    [seen] = [f for f in report.findings if f.topic == "latarnia"]
    assert seen.level == "ok" and sim.root_url in seen.message and "available" in seen.message
    # An announced failure while /v2 still answers: check reports what Latarnia says, the company still passes.
    now = dt.datetime.now(dt.UTC)
    window = {"from": (now - dt.timedelta(minutes=1)).isoformat(), "to": (now + dt.timedelta(hours=1)).isoformat(),
              "kind": "FAILURE", "blocksApi": False}
    async with http.post(f"{sim.root_url}/sim/faults", json={"outages": [window]}) as response:
        assert response.status == 200
    with i18n.using("pl"):
        report = await run_check(config, ["pelna"])
    [seen] = [f for f in report.findings if f.topic == "latarnia"]
    assert seen.level == "warning"
    assert seen.message == f"Latarnia ({sim.root_url}) zgłasza awarię (FAILURE) KSeF TEST: Awaria KSeF"
    assert "tryb" in seen.fix and report.companies[0].ok


@pytest.mark.parametrize("language", ["pl", "en"])
async def test_latarnia_url_in_the_config_wins(sim: Any, http: aiohttp.ClientSession, tmp_path: Path,
                                               language: str) -> None:
    token = await token_file(http, sim.base_url, tmp_path, SEND_RECEIVE, ["InvoiceRead"])
    config = load(write_config(tmp_path, sim.base_url, [{"name": "a", "nip": SEND_RECEIVE, "receive": True,
                                                         "token_file": str(token)}],
                               ksef={"latarnia_url": "http://127.0.0.1:9"}))
    with i18n.using(language):
        report = await run_check(config)
    [seen] = [f for f in report.findings if f.topic == "latarnia"]
    assert seen.level == "warning" and "http://127.0.0.1:9" in seen.message
    assert ("nie odpowiada" if language == "pl" else "does not answer") in seen.message


async def test_a_report_command_logs_only_what_went_wrong(sim: Any, http: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    """`ksefd check` logs in to KSeF: its info lines (ksef.authenticated, ...) would sit among the report on a
    terminal; only warnings and errors are logged beside a report."""
    import asyncio
    import sys

    config = await two_companies(sim, http, tmp_path)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "check", "-c", str(config),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                   stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert "[KSeF]" in out.decode()
    assert "ksef.authenticated" not in err.decode() and '"level": "info"' not in err.decode()
