"""`ksefd certificate enroll|list|revoke` against the simulator (issue #13 items 3 and 6): a company on a KSeF
token moves to a KSeF certificate in one command, the config lines printed or written, the key encrypted."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from ksefd import i18n
from ksefd.certificate_cli import run
from ksefd.cli import build_parser
from ksefd.config import load_config
from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import load_certificate
from ksefd.sim.config import SimConfig
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate

NIP = "5265877635"


@pytest.fixture
async def csim(sim_factory: Any) -> Any:
    return await sim_factory(config=SimConfig(limits_profile="off"))


def write_config(tmp_path: Path, base_url: str, credentials: str, language: str = "en") -> Path:
    """These tests read English (language = "en"); Polish, the default: test_polish_by_default below."""
    path = tmp_path / "ksefd.toml"
    path.write_text(f"""# my config
[ksef]
base_url = "{base_url}"

[daemon]
data_dir = "data"
language = "{language}"

[[companies]]
name = "acme"          # the shop
nip = "{NIP}"
{credentials}

[companies.receiving]
subject_types = ["Subject2"]
""", encoding="utf-8")
    return path


def qualified_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A stand-in for the person's qualified certificate: .crt + encrypted .key + password file."""
    cert, key = self_signed_certificate(nip=NIP, common_name="Jan Kowalski")
    (tmp_path / "jan.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "jan.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.BestAvailableEncryption(b"tajne")))
    (tmp_path / "jan.pass").write_text("tajne\n")
    return tmp_path / "jan.crt", tmp_path / "jan.key", tmp_path / "jan.pass"


async def cli(config_path: Path, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["certificate", *argv[:1], "-c", str(config_path), *argv[1:]])
    out = io.StringIO()
    config = load_config(config_path)
    with i18n.using(config.language):          # as the CLI does once the config is read (cli.py)
        code = await run(config, args, stdout=out)
    return code, out.getvalue()


async def test_token_company_moves_to_a_ksef_certificate_in_one_command(
        csim: Any, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = await create_ksef_token(http, csim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
    (tmp_path / "acme.token").write_text(token)
    config_path = write_config(tmp_path, csim.base_url, 'token_file = "acme.token"')

    code, _ = await cli(config_path, "enroll", "acme", "--type", "authentication")
    assert code == 1 and "--login-certificate" in capsys.readouterr().err      # a token cannot enroll

    crt, key, password = qualified_files(tmp_path)
    code, out = await cli(config_path, "enroll", "acme", "--type", "authentication", "--update-config",
                          "--login-certificate", str(crt), "--login-key", str(key), "--login-password-file",
                          str(password))
    assert code == 0, capsys.readouterr().err
    assert "Updated company 'acme'" in out
    text = config_path.read_text()
    assert "# my config" in text and "# the shop" in text and '# token_file = "acme.token"' in text
    assert (tmp_path / "ksefd.toml.bak").read_text().count('\ntoken_file = "acme.token"') == 1
    company = load_config(config_path).company("acme")
    assert company.credentials.kind == "certificate" and company.credentials.token_file is None
    assert company.credentials.private_key_password_file == tmp_path / "acme.pass"
    for path in (company.credentials.certificate, company.credentials.private_key, tmp_path / "acme.pass"):
        assert path is not None and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in company.credentials.private_key.read_bytes()   # type: ignore[union-attr]

    # The new certificate logs in by itself, and enrolls the company's Offline certificate (lines printed).
    creds = load_certificate(company.credentials.certificate, company.credentials.private_key,  # type: ignore[arg-type]
                             (tmp_path / "acme.pass").read_bytes())
    async with KsefClient("test", base_url=csim.base_url) as client:
        await client.context(ContextIdentifier.nip(NIP), creds).authenticate()
    before = config_path.read_text()
    code, out = await cli(config_path, "enroll", "acme", "--type", "offline", "--key", "rsa")
    assert code == 0, capsys.readouterr().err
    assert config_path.read_text() == before                                    # no --update-config
    lines = [line for line in out.splitlines() if line.startswith("offline_")]
    assert [line.split(" = ")[0] for line in lines] == ["offline_certificate", "offline_private_key",
                                                        "offline_private_key_password_file"]
    assert lines[2] == 'offline_private_key_password_file = "acme.pass"'
    offline_crt = tmp_path / lines[0].split('"')[1]
    assert offline_crt.is_file() and (tmp_path / lines[1].split('"')[1]).is_file()

    code, out = await cli(config_path, "list", "acme")
    assert code == 0
    rows = [line for line in out.splitlines()[1:] if line.strip()]
    assert len(rows) == 2 and sum("<- in config" in row for row in rows) == 1
    offline_serial = next(row.split()[0] for row in rows if "Offline" in row)

    code, out = await cli(config_path, "revoke", "acme", offline_serial.lower(), "--reason", "Superseded")
    assert code == 0 and f"{offline_serial} revoked" in out
    code, out = await cli(config_path, "list", "acme")
    assert any(offline_serial in row and "Revoked" in row for row in out.splitlines())


async def test_unknown_company_and_token_revoke(csim: Any, http: aiohttp.ClientSession, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    token = await create_ksef_token(http, csim.base_url, NIP, ["CredentialsManage"])
    (tmp_path / "acme.token").write_text(token)
    config_path = write_config(tmp_path, csim.base_url, 'token_file = "acme.token"')
    code, _ = await cli(config_path, "list", "nobody")
    assert code == 2 and "no company named 'nobody'" in capsys.readouterr().err
    code, _ = await cli(config_path, "revoke", "acme", "0123456789ABCDEF")
    assert code == 1 and "logs in with a KSeF token" in capsys.readouterr().err


async def test_polish_by_default(csim: Any, http: aiohttp.ClientSession, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    token = await create_ksef_token(http, csim.base_url, NIP, ["InvoiceWrite", "InvoiceRead"])
    (tmp_path / "acme.token").write_text(token)
    config_path = write_config(tmp_path, csim.base_url, 'token_file = "acme.token"', language="pl")
    code, _ = await cli(config_path, "list", "nobody")
    assert code == 2 and "nie ma firmy 'nobody'; znane firmy: acme" in capsys.readouterr().err
    code, _ = await cli(config_path, "enroll", "acme", "--type", "authentication")
    err = capsys.readouterr().err
    assert code == 1 and "firma acme loguje się tokenem KSeF" in err and "--login-certificate" in err
    crt, key, password = qualified_files(tmp_path)
    login = ["--login-certificate", str(crt), "--login-key", str(key), "--login-password-file", str(password)]
    code, out = await cli(config_path, "enroll", "acme", "--type", "authentication", *login)
    assert code == 0, capsys.readouterr().err
    assert "wysłany; czekam, aż KSeF wystawi certyfikat…" in out
    assert "(Uwierzytelnianie) ważny od " in out and "klucz prywatny" in out and "(zaszyfrowany; hasło w pliku" in out
    assert "Wklej do bloku [[companies]] firmy 'acme' w pliku" in out
    assert 'i usuń jej wiersz token_file = "' in out
    code, out = await cli(config_path, "list", "acme", *login)
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["numer", "typ", "stan"] and "Uwierzytelnianie" in row and "Aktywny" in row
    serial = row.split()[0]
    code, out = await cli(config_path, "revoke", "acme", serial, *login)
    assert code == 0 and f"Certyfikat KSeF {serial} unieważniony (Unspecified)." in out
    for english in ("Enrollment", "valid", "Paste", "revoked", "serial"):
        assert english not in out, english
