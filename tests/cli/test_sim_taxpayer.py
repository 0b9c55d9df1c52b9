"""`ksefd sim taxpayer` (issue #14 point 6): an ERP integrator gets a working token (and a certificate) from a
running simulator with one command, and `ksefd run` sends with it, as README "Test your ERP against the
simulator" says."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from ksefd import i18n
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sandbox import SandboxError, parse_permissions, pesel_for
from ksefd.sim.permissions import PERSONS

NIP = "5260250274"
BUYER = "9999999999"


async def _ksefd(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ksefd", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


def _drop_invoice(outbox: Path, number: str) -> None:
    outbox.mkdir(parents=True, exist_ok=True)
    template = next(n for n in sample_names() if not has_attachment(sample_bytes(n)))
    (outbox / "fv.xml").write_bytes(make_invoice(sample_bytes(template), number=number, seller_nip=NIP,
                                                 buyer_nip=BUYER, issue_date=dt.date.today()))


def _config_from(printed: str, folder: Path) -> Path:
    """The config the command prints, pasted into ksefd.toml as the README tells."""
    path = folder / "ksefd.toml"
    path.write_text(printed[printed.index("[ksef]"):], encoding="utf-8")
    return path


@pytest.mark.timeout(120)
async def test_the_token_written_sends_an_invoice_with_ksefd_run(sim, tmp_path: Path) -> None:
    code, out, err = await _ksefd("sim", "taxpayer", NIP, "--url", sim.base_url,
                                  "--token-out", str(tmp_path / "firma.token"))
    assert code == 0, err
    token_file = tmp_path / "firma.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert "InvoiceRead, InvoiceWrite" in out
    assert sim.world.store.get(PERSONS, NIP) is not None          # created through /testdata/person
    config = _config_from(out, tmp_path)
    _drop_invoice(tmp_path / "ksefd-data" / f"firma-{NIP}" / "outbox", "FV/1/2026")
    code, _, err = await _ksefd("run", "-c", str(config), "--once")
    assert code == 0, err
    sent = tmp_path / "ksefd-data" / f"firma-{NIP}" / "sent"
    receipt = json.loads((sent / "fv.ksef.json").read_text("utf-8"))
    assert receipt["ksefNumber"].startswith(f"{NIP}-")
    assert (sent / "fv.upo.xml").exists()


@pytest.mark.timeout(120)
async def test_the_certificate_written_logs_in_and_a_second_run_reuses_the_taxpayer(sim, tmp_path: Path) -> None:
    await _ksefd("sim", "taxpayer", NIP, "--url", sim.base_url, "--token-out", str(tmp_path / "first.token"))
    code, out, err = await _ksefd("sim", "taxpayer", NIP, "--url", sim.base_url, "--permissions", "write",
                                  "--token-out", str(tmp_path / "t.token"), "--cert-out", str(tmp_path / "c.crt"),
                                  "--key-out", str(tmp_path / "c.key"))
    assert code == 0, err
    assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    assert "receive = false" in out and 'certificate = "' in out       # a write-only token cannot receive
    config = _config_from(out, tmp_path)
    _drop_invoice(tmp_path / "ksefd-data" / f"firma-{NIP}" / "outbox", "FV/2/2026")
    code, _, err = await _ksefd("run", "-c", str(config), "--once")
    assert code == 0, err
    assert (tmp_path / "ksefd-data" / f"firma-{NIP}" / "sent" / "fv.ksef.json").exists()


async def test_a_stopped_simulator_and_a_bad_nip_are_told_apart(tmp_path: Path) -> None:
    code, _, err = await _ksefd("sim", "taxpayer", NIP, "--url", "http://127.0.0.1:9/v2",
                                "--token-out", str(tmp_path / "t"))
    # Polish, the default (no config to name another language)
    assert code == 1 and "pod adresem http://127.0.0.1:9/v2 nie odpowiada żaden symulator" in err
    assert "uruchom go poleceniem `ksefd sim`" in err
    code, _, err = await _ksefd("sim", "taxpayer", "1234567890", "--token-out", str(tmp_path / "t"))
    assert code == 1 and "to nie jest poprawny NIP" in err
    assert not (tmp_path / "t").exists()


def test_permission_names_short_and_official() -> None:
    assert parse_permissions("read, write") == ["InvoiceRead", "InvoiceWrite"]
    assert parse_permissions("InvoiceRead,introspection") == ["InvoiceRead", "Introspection"]
    with i18n.using("en"), pytest.raises(SandboxError, match="unknown permission 'send'"):
        parse_permissions("send")


def test_the_test_pesel_matches_the_spec_pattern() -> None:
    import re
    spec = json.loads((Path(__file__).resolve().parents[2].parent / "shared/ksef/openapi.json").read_text())
    pattern = spec["components"]["schemas"]["Pesel"]["pattern"]
    for nip in (NIP, BUYER, "1111111111", "7010000009"):
        assert re.fullmatch(pattern, pesel_for(nip)), nip


def test_the_simulator_address_may_be_given_with_or_without_v2() -> None:
    from ksefd.sandbox import api_url

    assert api_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/v2"      # as a browser shows it
    assert api_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/v2"
    assert api_url("http://127.0.0.1:8080/v2") == "http://127.0.0.1:8080/v2"   # as `ksefd sim` prints it
