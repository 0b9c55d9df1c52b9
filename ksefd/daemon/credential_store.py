"""`ksefd credentials set`: a pasted KSeF token, cleaned, verified against KSeF and stored the platform's
way, so that only the service can read it (issue #12 point 6).

Where it goes (`--store`, default `auto`):

* `systemd`: `systemd-creds encrypt` (TPM2-bound where the machine has a TPM, else the host key) into
  `<config dir>/credentials/NAME.cred`; the service gets it through `LoadCredentialEncrypted=NAME:PATH`, which this
  command prints, and the config names it by the bare `token_file = "NAME"` ($CREDENTIALS_DIRECTORY). systemd
  decrypts it when the service starts: a replaced .cred needs `systemctl restart ksefd` (a graceful drain);
* `file`: a plain file only the owner can read (0600, folder 0700): the company's configured `token_file` when
  it is a path, else `<config dir>/credentials/NAME`. The daemon reads it again at each login, so a replaced
  token is used without a restart (connection.py);
* `dpapi` (Windows): the token encrypted with DPAPI for this machine (`CryptProtectData`, ctypes) into
  `NAME.dpapi`; the service reads it through `read_secret_text`.

`auto` is `dpapi` on Windows, `systemd` where `systemd-creds` exists and the service is set up for it (this runs
as root), else `file` (and the command says so). The token never reaches a log, a message, or the command line
of `systemd-creds` (it goes through its standard input).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from ksefd.config import Environment, is_loopback, nip_is_valid
from ksefd.i18n import _
from ksefd.ksef import ContextIdentifier, CredentialsError, KsefClient, KsefError, KsefToken, key_files

from . import dpapi
from .words import error_text

Store = Literal["auto", "systemd", "file", "dpapi"]
CREDENTIALS_FOLDER = "credentials"


class CredentialStoreError(Exception):
    """Why the token was not stored, with the fix (nothing secret in it)."""


@dataclass(frozen=True)
class Target:
    """The company a token is for, as the config names it (read leniently: the token file may not exist yet)."""

    company: str
    nip: str
    environment: Environment
    base_url: str | None
    token_file: str | None            # the config's value as written: a bare name (systemd) or a path
    config_dir: Path

    @property
    def name(self) -> str:
        """The credential's name: the configured token_file's file name, else COMPANY.token."""
        return Path(self.token_file).name if self.token_file else f"{self.company}.token"

    @property
    def configured_path(self) -> Path | None:
        """The configured token_file when it is a path (not a bare name for $CREDENTIALS_DIRECTORY)."""
        if self.token_file is None or Path(self.token_file).name == self.token_file:
            return None
        path = Path(self.token_file).expanduser()
        return path if path.is_absolute() else self.config_dir / path


@dataclass(frozen=True)
class Stored:
    kind: Literal["systemd", "file", "dpapi"]
    path: Path
    name: str                        # the credential's name (systemd) or the file name
    instructions: list[str]          # what to add to the unit / config, for a person


def read_target(config_path: Path, company: str) -> Target:
    """The company's entry in the config, read without the full validation of `load_config`, which would
    refuse the config while the token file this command is about to write does not exist yet."""
    source = config_path.expanduser().absolute()
    try:
        raw: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CredentialStoreError(_("cannot read the config {config}: {error}", config=source, error=exc)) from None
    entries = [c for c in raw.get("companies") or [] if isinstance(c, dict) and c.get("name") == company]
    if not entries:
        known = ", ".join(str(c.get("name")) for c in raw.get("companies") or [] if isinstance(c, dict))
        raise CredentialStoreError(_("no company {company} in {config} (companies: {names})", company=repr(company),
                                     config=source, names=known or _("no companies")))
    entry, ksef = entries[0], raw.get("ksef") or {}
    nip = str(entry.get("nip", ""))
    if not nip_is_valid(nip):
        raise CredentialStoreError(_("{config}: company {company}: nip {nip} is not a valid NIP; correct it first",
                                     config=source, company=company, nip=repr(nip)))
    environment = entry.get("environment") or ksef.get("environment") or "test"
    if environment not in ("test", "demo", "prod"):
        raise CredentialStoreError(_("{config}: environment {environment} is not test, demo or prod", config=source,
                                     environment=repr(environment)))
    base_url = entry.get("base_url") or ksef.get("base_url")
    if base_url is not None:
        parts = urlsplit(str(base_url))
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
            raise CredentialStoreError(_("{config}: base_url {url} is not https: the token would travel "
                                         "unencrypted; use https (plain http only for 127.0.0.1)", config=source,
                                         url=base_url))
    token_file = entry.get("token_file")
    return Target(company, nip, cast(Environment, environment), None if base_url is None else str(base_url),
                  None if token_file is None else str(token_file), source.parent)



def clean_token(text: str, company: Target) -> KsefToken:
    """The token as KSeF issued it (whitespace and invisible characters dropped), for this company's NIP."""
    try:
        token = KsefToken.parse(text)
    except CredentialsError as exc:
        raise CredentialStoreError(error_text(exc)) from None        # it says how to paste the token
    if token.context_part.lower() != f"nip-{company.nip}":
        raise CredentialStoreError(_("this token was issued for {issued_for}, the company {company} is NIP {nip}: "
                                     "generate the token in the context of NIP {nip}", issued_for=token.context_part,
                                     company=company.company, nip=company.nip))
    return token


async def verify(company: Target, token: KsefToken) -> None:
    """Log in to KSeF with the token (the company's environment and URL); raises CredentialStoreError."""
    async with KsefClient(company.environment, base_url=company.base_url) as client:
        try:
            await client.context(ContextIdentifier.nip(company.nip), token).authenticate()
        except KsefError as exc:
            raise CredentialStoreError(_("KSeF refused the token ({kind}): {error}; check that the token is active "
                                         "in the taxpayer's application (Aplikacja Podatnika) and belongs to KSeF "
                                         "{environment} (or store it anyway with --no-verify)",
                                         kind=type(exc).__name__, error=error_text(exc),
                                         environment=company.environment.upper())) from None


def choose(store: Store) -> Literal["systemd", "file", "dpapi"]:
    if store != "auto":
        return store
    if sys.platform == "win32":
        return "dpapi"
    if shutil.which("systemd-creds") and hasattr(os, "geteuid") and os.geteuid() == 0:
        return "systemd"
    return "file"


def store_token(company: Target, token: KsefToken, store: Store = "auto") -> Stored:
    kind = choose(store)
    name = company.name
    folder = company.config_dir / CREDENTIALS_FOLDER
    if kind == "systemd":
        path = folder / f"{name}.cred"
        _encrypt_with_systemd(name, token, path)
        return Stored(kind, path, name, [
            _("add to the unit (sudo systemctl edit ksefd): LoadCredentialEncrypted={name}:{path}", name=name,
              path=path),
            _('and name it in the config: token_file = "{name}" (company {company})', name=name,
              company=company.company),
            _("then: sudo systemctl daemon-reload && sudo systemctl restart ksefd (systemd decrypts it at start)")])
    if kind == "dpapi":
        path = folder / f"{name}.dpapi"
        write_private(path, dpapi.protect(token.value.encode("utf-8")))
        return Stored(kind, path, path.name, [
            _('set token_file = "{path}" for company {company}', path=path, company=company.company),
            _("encrypted with DPAPI for this machine: only this machine can read it")])
    configured = company.configured_path
    path = configured if configured is not None else folder / name
    write_private(path, (token.value + "\n").encode("utf-8"))
    notes = [_("stored as a plain file readable only by its owner (0600): {path}", path=path)]
    if path != configured:
        notes.append(_('set token_file = "{path}" for company {company}', path=path, company=company.company))
    notes.append(_("the daemon reads it at the company's next login: no restart needed"))
    return Stored("file", path, path.name, notes)


def _encrypt_with_systemd(name: str, token: KsefToken, path: Path) -> None:
    ensure_private_folder(path.parent)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        result = subprocess.run(["systemd-creds", "encrypt", f"--name={name}", "-", str(temp)],
                                input=token.value.encode("utf-8"), capture_output=True, timeout=60, check=False)
    except OSError as exc:
        raise CredentialStoreError(_("cannot run systemd-creds: {error}; use --store file", error=exc)) from None
    if result.returncode != 0:
        with contextlib.suppress(OSError):
            temp.unlink()
        why = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no message)"]
        raise CredentialStoreError(_("systemd-creds encrypt failed: {why}; run this as root (sudo), or use "
                                     "--store file", why=why[0]))
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def ensure_private_folder(folder: Path) -> None:
    """The folder, created 0700 if missing (an existing one keeps its mode: it may be shared on purpose)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable only by its owner (0600) from the first byte, in a 0700 folder."""
    ensure_private_folder(path.parent)
    key_files.write_private(path, data)


def read_secret_text(path: Path) -> str:
    """A credential file's text: a `.dpapi` file is decrypted (Windows), any other is read as UTF-8.
    The hook for connection.load_credentials (its `_read_text`), so a DPAPI-stored token logs in."""
    if path.suffix.lower() == ".dpapi":
        return dpapi.unprotect(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")
