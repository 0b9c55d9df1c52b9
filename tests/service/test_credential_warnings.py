"""Credential lifecycle warnings (issue #12 point 7): a certificate from 60 days before its end, daily in the log;
every company still on a KSeF token (token login ends 31.12.2026, PROTOCOL.md §15), in the log, in `ksefd status`
and on the status page, pointing to certificates (docs/certificates.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from cryptography.hazmat.primitives import serialization

from ksefd import i18n
from ksefd.clock import ManualClock, SystemClock, warsaw_today
from ksefd.daemon.credential_expiry import credential_expiry, warn_daily
from ksefd.daemon.service import serve
from tests.daemon.support import OTHER, ROOT, SELLER, load, one_company, write_config
from tests.support.ksef_auth import self_signed_certificate

NOW = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.UTC)


def certificate(folder: Path, name: str, days: int) -> dict[str, str]:
    cert, key = self_signed_certificate(nip=SELLER, key_type="ec", valid_from=NOW - dt.timedelta(days=300),
                                        valid_days=300 + days)
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (folder / f"{name}.key").write_bytes(pem)
    return {"certificate": str(folder / f"{name}.crt"), "private_key": str(folder / f"{name}.key")}


async def test_the_daily_warning_names_the_token_companies_and_certificates_within_60_days(tmp_path: Path) -> None:
    (tmp_path / "t.token").write_text("unused", encoding="utf-8")
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", [
        {"name": "on-token", "nip": SELLER, "token_file": str(tmp_path / "t.token")},
        {"name": "soon", "nip": OTHER, **certificate(tmp_path, "soon", 30)},
        {"name": "later", "nip": "1111111111", **certificate(tmp_path, "later", 200)},
        {"name": "gone", "nip": "1234563218", **certificate(tmp_path, "gone", -2)}]))
    with structlog.testing.capture_logs() as captured:
        await warn_daily(config, ManualClock(NOW))
    warned = {c["company"]: c for c in captured if c["event"] == "credentials.expiring"}
    assert set(warned) == {"on-token", "soon", "gone"}
    assert all(c["log_level"] == "warning" for c in warned.values())
    assert warned["on-token"]["last_day"] == "2026-12-31" and "docs/certificates.md" in warned["on-token"]["advice"]
    assert warned["soon"]["days_left"] in (29, 30) and "Renew it" in warned["soon"]["advice"]
    assert "expired on" in warned["gone"]["advice"]
    # 61 days before the end: not yet; the day the window opens: warned.
    expiry = credential_expiry(config.company("soon"))
    assert expiry is not None
    assert expiry.warning(expiry.last_day - dt.timedelta(days=61)) is None
    assert expiry.warning(expiry.last_day - dt.timedelta(days=60)) is not None
    # What `ksefd status` and the status page show: the config's language, dates as people in Poland write them.
    day = f"{expiry.last_day:%d.%m.%Y}"
    with i18n.using("pl"):
        soon = expiry.warning(expiry.last_day - dt.timedelta(days=30))
        gone = expiry.warning(expiry.last_day + dt.timedelta(days=2))
    assert soon == (f"soon: certyfikat KSeF {tmp_path / 'soon.crt'} wygasa {day} (za 30 dni). Odnów go (`ksefd "
                    "certificate enroll`, zob. docs/certificates.md); ksefd użyje nowych plików przy następnym "
                    "logowaniu, bez restartu")
    assert gone is not None and gone.startswith(f"soon: certyfikat KSeF {tmp_path / 'soon.crt'} wygasł {day}. ")
    with i18n.using("en"):
        soon = expiry.warning(expiry.last_day - dt.timedelta(days=30))
    assert soon is not None and soon.startswith(f"soon: the KSeF certificate {tmp_path / 'soon.crt'} expires on "
                                                f"{day} (in 30 days). Renew it")


async def test_the_daemon_warns_at_start_and_status_lists_the_token_company(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as captured:
        task = asyncio.create_task(serve(config, stop))
        for _ in range(100):
            if any(c["event"] == "credentials.expiring" for c in captured):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)
    [logged] = [c for c in captured if c["event"] == "credentials.expiring"]
    assert logged["company"] == "acme" and logged["advice"].startswith("acme logs in with a KSeF token")  # English
    assert config.source is not None
    days = (dt.date(2026, 12, 31) - warsaw_today(SystemClock())).days
    for language in ("pl", "en"):            # Polish by default; English with language = "en"
        if language == "en":
            text = config.source.read_text(encoding="utf-8").replace("[daemon]\n", '[daemon]\nlanguage = "en"\n')
            config.source.write_text(text, encoding="utf-8")
        for extra in ((), ("--json",)):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", "status", "-c",
                                                        str(config.source), *extra, cwd=ROOT,
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            text = out.decode()
            if extra:
                (warning,) = json.loads(text)["credentialWarnings"]
                assert warning.startswith("acme loguje się tokenem KSeF" if language == "pl"
                                          else "acme logs in with a KSeF token")
                continue
            section = text[text.index("\n\nDane logowania" if language == "pl" else "\n\nCredentials"):]
            left = i18n.counted(days, "day", language)
            if language == "pl":
                assert section.strip().splitlines()[1:] == [
                    f"  UWAGA acme loguje się tokenem KSeF: logowanie tokenem kończy się 31.12.2026 (za {left}). "
                    "Przenieś firmę na certyfikat KSeF (`ksefd certificate enroll`, zob. docs/certificates.md)"]
            else:
                assert section.strip().splitlines()[1:] == [
                    f"  WARNING acme logs in with a KSeF token: token login ends on 31.12.2026 (in {left}). "
                    "Move it to a KSeF certificate (`ksefd certificate enroll`, see docs/certificates.md)"]
