"""`ksefd sim taxpayer`: a taxpayer in a running simulator, with a working KSeF token written to a file.

An ERP integrator testing against `ksefd sim` should not have to write XAdES code to get a token. This does
what a user does on the TEST environment (PROTOCOL.md §11): the taxpayer is created through the simulator's
TEST-only data API (POST /testdata/person), a self-signed person's certificate with serialNumber TINPL-<nip>
logs in to the NIP's context (TEST accepts self-signed certificates, §3.3), and POST /tokens generates a
KSeF token with the permissions asked for (§9.1). The certificate and its key are kept only on request:
they log in too, as a `certificate` + `private_key` company.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import aiohttp

from ksefd.demo_setup import mint_token, self_signed
from ksefd.i18n import _
from ksefd.ksef import KsefClient

DEFAULT_SIM_URL = "http://127.0.0.1:8080/v2"    # `ksefd sim` without --host/--port
# Short names an integrator types; the full names of openapi.json TokenPermissionType are accepted as well.
PERMISSION_NAMES = {"read": "InvoiceRead", "write": "InvoiceWrite"}
TOKEN_PERMISSIONS = ("InvoiceRead", "InvoiceWrite", "CredentialsRead", "CredentialsManage", "SubunitManage",
                     "EnforcementOperations", "Introspection", "CollectiveIdentifierManage")


class SandboxError(Exception):
    """What went wrong and what to do, for the command line."""


@dataclass(frozen=True)
class Taxpayer:
    nip: str
    permissions: list[str]
    token_file: Path
    certificate: Path | None
    private_key: Path | None


def parse_permissions(text: str) -> list[str]:
    """`read,write` -> ["InvoiceRead", "InvoiceWrite"]; an unknown name is refused with the names known."""
    wanted: list[str] = []
    by_lower = {p.lower(): p for p in TOKEN_PERMISSIONS}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = PERMISSION_NAMES.get(part.lower()) or by_lower.get(part.lower())
        if name is None:
            known = ", ".join([*PERMISSION_NAMES, *TOKEN_PERMISSIONS])
            raise SandboxError(_("--permissions: unknown permission {name}; use any of: {known}", name=repr(part),
                                 known=known))
        if name not in wanted:
            wanted.append(name)
    if not wanted:
        raise SandboxError(_("--permissions: give at least one, e.g. read,write"))
    return wanted


def pesel_for(nip: str) -> str:
    """A PESEL for the test person, made from the NIP so that a re-run finds the same person; it matches
    openapi.json's Pesel pattern (month 01-09) and carries a valid check digit."""
    digits = nip[:2] + f"0{1 + int(nip[2]) % 9}" + nip[3:9]
    weights = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
    check = (10 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 10) % 10
    return digits + str(check)


async def _create_person(base_url: str, nip: str) -> None:
    body = {"nip": nip, "pesel": pesel_for(nip), "isBailiff": False,
            "description": f"ksefd sim taxpayer {nip}"}
    try:
        async with aiohttp.ClientSession() as http, http.post(f"{base_url}/testdata/person", json=body) as reply:
            if reply.status == 200:
                return
            text = await reply.text()
    except aiohttp.ClientError as error:
        raise SandboxError(_("no simulator answers at {url} ({error}); start one with `ksefd sim` or give its "
                             "address with --url", url=base_url, error=error)) from error
    if "30001" in text:     # the person exists already: a second run only makes a new token
        return
    raise SandboxError(_("the simulator at {url} refused to create the taxpayer {nip}: HTTP {status} {text}",
                         url=base_url, nip=nip, status=reply.status, text=text[:300]))


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


@overload
def _absolute(path: Path) -> Path: ...
@overload
def _absolute(path: None) -> None: ...
def _absolute(path: Path | None) -> Path | None:
    return path.absolute() if path is not None else None


def _write_files(token: str, token_out: Path, cert: tuple[Path, Path | None], key: tuple[Path, Path | None]) -> None:
    _write_secret(token_out, (token + "\n").encode())
    if cert[1] is not None and key[1] is not None:
        cert[1].parent.mkdir(parents=True, exist_ok=True)
        cert[1].write_bytes(cert[0].read_bytes())
        _write_secret(key[1], key[0].read_bytes())


def api_url(url: str) -> str:
    """The simulator's API address from what a person may type: `http://127.0.0.1:8080` (its root, as a
    browser shows it) or `http://127.0.0.1:8080/v2` (what `ksefd sim` prints) both mean the API under /v2."""
    url = url.rstrip("/")
    return url if url.endswith("/v2") else f"{url}/v2"


async def make_taxpayer(base_url: str, nip: str, permissions: list[str], token_out: Path,
                        cert_out: Path | None = None, key_out: Path | None = None) -> Taxpayer:
    """Create the taxpayer in the simulator and write its token (and, if asked, the login certificate)."""
    from ksefd.config import nip_is_valid

    if not nip_is_valid(nip):
        raise SandboxError(_("{nip} is not a valid NIP (10 digits with a correct check digit), e.g. 9999999999",
                             nip=repr(nip)))
    if (cert_out is None) != (key_out is None):
        raise SandboxError(_("give both --cert-out and --key-out, or neither"))
    # absolute: the config printed for pasting works from any folder
    token_out, cert_out, key_out = _absolute(token_out), _absolute(cert_out), _absolute(key_out)
    await _create_person(base_url, nip)
    with tempfile.TemporaryDirectory(prefix="ksefd-taxpayer-") as scratch:
        cert, key = self_signed(nip, "Jan", "Testowy", Path(scratch))
        try:
            async with KsefClient("test", base_url=base_url) as client:
                token = await mint_token(client, nip, cert, key, permissions, "ksefd sim taxpayer")
        except Exception as error:      # the simulator's own words: a refused permission, a stopped simulator
            raise SandboxError(_("the simulator at {url} did not issue a token for {nip}: {error}", url=base_url,
                                 nip=nip, error=error)) from error
        _write_files(token, token_out, (cert, cert_out), (key, key_out))
    return Taxpayer(nip, permissions, token_out, cert_out, key_out)


def config_lines(taxpayer: Taxpayer, base_url: str) -> str:
    """The config to paste: what the integrator needs next (README "Test your ERP against the simulator")."""
    send, receive = "InvoiceWrite" in taxpayer.permissions, "InvoiceRead" in taxpayer.permissions
    login = (f'certificate = "{taxpayer.certificate}"\nprivate_key = "{taxpayer.private_key}"\n'
             f'# or: token_file = "{taxpayer.token_file}"' if taxpayer.certificate
             else f'token_file = "{taxpayer.token_file}"')
    return (f'[ksef]\nenvironment = "test"\nbase_url = "{base_url}"\n\n[daemon]\ndata_dir = "ksefd-data"\n\n'
            f'[[companies]]\nname = "firma-{taxpayer.nip}"\n'
            f'nip = "{taxpayer.nip}"\nsend = {str(send).lower()}\nreceive = {str(receive).lower()}\n{login}\n')
