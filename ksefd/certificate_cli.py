"""`ksefd certificate enroll|list|revoke`: a company's KSeF certificates (PROTOCOL.md §9.3, §15), logged in with the
XAdES credential the company already has (a qualified certificate or seal as .p12 or .crt + .key, or a KSeF
certificate), or with one given on the command line (`--login-certificate`, for a company still on a token).

`enroll` writes the new private key (encrypted, 0600) before the request is sent, so an interrupted run never
loses the key of a certificate KSeF may issue; then the certificate; then either changes the config
(`--update-config`, the old file kept as .bak) or prints the exact lines to paste.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ksefd.clock import WARSAW, SystemClock
from ksefd.config import Company, Config
from ksefd.config.edit import update_company
from ksefd.config.model import ConfigError
from ksefd.daemon.certificate_files import (
    CONFIG_KEYS,
    configured_certificate,
    default_directory,
    login_credentials,
    new_paths,
)
from ksefd.daemon.words import error_text
from ksefd.i18n import _
from ksefd.ksef import (
    CertificateCredentials,
    CertificateType,
    ContextIdentifier,
    Forbidden,
    KsefClient,
    KsefContext,
    KsefError,
    build_csr,
    certificate_serial_hex,
    key_files,
    load_certificate,
    load_certificates,
    load_pkcs12,
    new_key,
)

TYPES: dict[str, CertificateType] = {"authentication": "Authentication", "offline": "Offline"}


@dataclass(frozen=True)
class LoginFiles:
    """A certificate given on the command line instead of the company's configured one."""

    certificate: Path
    private_key: Path | None = None
    password_file: Path | None = None

    def load(self) -> CertificateCredentials:
        password = key_files.read_password(self.password_file) if self.password_file else None
        if self.certificate.suffix.lower() in (".p12", ".pfx"):
            return load_pkcs12(self.certificate, password)
        return load_certificate(self.certificate, self.private_key, password)


Printer = Callable[[str], None]


def _day(moment: dt.datetime) -> str:
    """A date as people in Poland read it (Warsaw time): 31.12.2026."""
    return f"{moment.astimezone(WARSAW):%d.%m.%Y}"


def _type_name(certificate_type: str) -> str:
    """KSeF's certificate type in words (the values stay KSeF's: Authentication, Offline)."""
    return {"Authentication": _("Authentication"), "Offline": _("Offline")}.get(certificate_type, certificate_type)


def _status_name(status: str) -> str:
    return {"Active": _("Active"), "Blocked": _("Blocked"), "Revoked": _("Revoked"),
            "Expired": _("Expired")}.get(status, status)


def _err(text: str) -> None:
    print(f"ksefd certificate: {text}", file=sys.stderr)


def _context(company: Company, login: LoginFiles | None) -> tuple[KsefClient, KsefContext]:
    credentials = login.load() if login is not None else login_credentials(company)
    client = KsefClient(company.environment, base_url=company.base_url)
    return client, client.context(ContextIdentifier.nip(company.nip), credentials)


def _company(config: Config, name: str) -> Company | None:
    try:
        return config.company(name)
    except KeyError:
        _err(_("no company named {name} in {config}; known: {names}", name=repr(name), config=config.source,
               names=", ".join(c.name for c in config.companies)))
        return None


def _open(config: Config, name: str, login: LoginFiles | None) -> tuple[Company, KsefClient, KsefContext] | int:
    """The company and a client logged in as it, or the exit code after saying why not (2: no such company)."""
    company = _company(config, name)
    if company is None:
        return 2
    try:
        client, context = _context(company, login)
    except KsefError as exc:
        _err(error_text(exc))
        return 1
    return company, client, context


async def enroll_command(config: Config, company_name: str, kind: str, *, update_config: bool = False,
                         key_type: str = "ec", login: LoginFiles | None = None, out: Printer = print,
                         out_dir: Path | None = None) -> int:
    opened = _open(config, company_name, login)
    if isinstance(opened, int):
        return opened
    company, client, context = opened
    certificate_type = TYPES[kind]
    base_dir = config.source.parent if config.source else Path.cwd()
    try:
        manager = context.certificates()
        limits = await manager.limits()
        if not limits.can_request:
            _err(_("KSeF allows no new certificate for this person or seal now (enrollments left {enrollments}, "
                   "certificates left {certificates}); revoke unused ones with `ksefd certificate revoke -c "
                   "{config} {company} SERIAL`",
                   enrollments=f"{limits.enrollment.remaining}/{limits.enrollment.limit}",
                   certificates=f"{limits.certificate.remaining}/{limits.certificate.limit}",
                   config=config.source, company=company.name))
            return 1
        data = await manager.enrollment_data()
        paths = new_paths(company, certificate_type, SystemClock().now(), out_dir or default_directory(company,
                                                                                                        base_dir))
        key = new_key(key_type)
        # The key is on disk before KSeF hears of it: whatever happens next, it is not lost (PROTOCOL.md §15).
        key_files.write_key(paths.private_key, key, key_files.ensure_password_file(paths.password_file))
        started = await manager.submit(f"ksefd {company.name} {certificate_type}", certificate_type,
                                       build_csr(data, key))
        out(_("Enrollment {reference} sent; waiting for KSeF to issue the certificate…",
              reference=started.reference_number))
        serial = await manager.wait(started.reference_number)
        issued = await manager.collect(serial, key, certificate_type, f"ksefd {company.name} {certificate_type}")
        key_files.write_certificate(paths.certificate, issued.certificate)
    except KsefError as exc:
        _err(error_text(exc))
        return 1
    finally:
        await client.close()
    out(_("KSeF certificate {serial} ({type}) valid from {start} to {end}:", serial=serial,
          type=_type_name(certificate_type), start=_day(issued.certificate.not_valid_before_utc),
          end=_day(issued.certificate.not_valid_after_utc)))
    out(_("  certificate  {file}", file=paths.certificate))
    out(_("  private key  {file} (encrypted; password in {password_file})", file=paths.private_key,
          password_file=paths.password_file))
    values: dict[str, str | None] = dict(paths.config_values(certificate_type, base_dir))
    if certificate_type == "Authentication" and company.credentials.token_file is not None:
        values["token_file"] = None
    return _apply(config, company, certificate_type, values, update_config, out)


def _apply(config: Config, company: Company, certificate_type: str, values: dict[str, str | None],
           update_config: bool, out: Printer) -> int:
    reason = f"ksefd certificate enroll, {dt.date.today():%Y-%m-%d}"
    if update_config and config.source is not None:
        try:
            backup = update_company(config.source, company.name, values, reason)
        except (ConfigError, KeyError, OSError) as exc:
            _err(_("the config was not changed ({error}); paste the lines below by hand", error=exc))
        else:
            out(_("Updated company {company} in {config} (previous version: {backup}).", company=repr(company.name),
                  config=config.source, backup=backup))
            return 0
    out(_("Paste into the [[companies]] block of {company} in {config}:", company=repr(company.name),
          config=config.source or _("the config file")))
    for key, value in values.items():
        if value is not None:
            out(f'{key} = "{value}"')
    if values.get("token_file", "") is None:
        out(_("and delete its line token_file = \"{file}\" (certificate and token_file cannot both be set)",
              file=company.credentials.token_file))
    return 0


def _serial_of(path: Path | None) -> str | None:
    if path is None or path.suffix.lower() in (".p12", ".pfx"):
        return None
    try:
        return certificate_serial_hex(load_certificates(path.read_bytes(), str(path))[0])
    except (OSError, KsefError):
        return None


async def list_command(config: Config, company_name: str, *, login: LoginFiles | None = None,
                       out: Printer = print) -> int:
    opened = _open(config, company_name, login)
    if isinstance(opened, int):
        return opened
    company, client, context = opened
    try:
        found = await context.certificates().query()
    except KsefError as exc:
        _err(error_text(exc))
        return 1
    finally:
        await client.close()
    configured = {_serial_of(configured_certificate(company, kind)): kind for kind in CONFIG_KEYS}
    out(f"{_('serial'):<16}  {_('type'):<16}  {_('status'):<11}  {_('valid from'):<10}  {_('valid to'):<10}  "
        f"{_('name')}")
    for item in found:
        mark = _("  <- in config") if item.certificate_serial_number in configured else ""
        out(f"{item.certificate_serial_number:<16}  {_type_name(item.type):<16}  {_status_name(item.status):<11}  "
            f"{_day(item.valid_from)}  {_day(item.valid_to)}  {item.name}{mark}")
    if not found:
        out(_("no KSeF certificates for this login"))
    return 0


async def revoke_command(config: Config, company_name: str, serial: str, *, reason: str = "Unspecified",
                         login: LoginFiles | None = None, out: Printer = print) -> int:
    opened = _open(config, company_name, login)
    if isinstance(opened, int):
        return opened
    company, client, context = opened
    serial = serial.strip().upper()
    try:
        await context.certificates().revoke(serial, reason)
    except Forbidden as exc:
        _err(_("KSeF refused: {message}. Revoking needs a login with a signature or certificate, not a KSeF token",
               message=exc.message))
        return 1
    except KsefError as exc:
        _err(error_text(exc))
        return 1
    finally:
        await client.close()
    out(_("KSeF certificate {serial} revoked ({reason}).", serial=serial, reason=reason))
    for kind in CONFIG_KEYS:
        if _serial_of(configured_certificate(company, kind)) == serial:
            out(_("Company {company} still names it in the config ({key}); replace it, e.g. `ksefd certificate "
                  "enroll -c {config} {name} --type {type} --update-config`.", company=repr(company.name),
                  key=CONFIG_KEYS[kind][0], config=config.source, name=company.name, type=kind.lower()))
    return 0


async def run(config: Config, args: argparse.Namespace, stdout: TextIO = sys.stdout) -> int:
    """Dispatch a parsed `ksefd certificate …` command."""
    login = LoginFiles(args.login_certificate, args.login_key, args.login_password_file) \
        if args.login_certificate else None

    def out(text: str) -> None:
        print(text, file=stdout, flush=True)

    if args.certificate_command == "enroll":
        return await enroll_command(config, args.company, args.type, update_config=args.update_config,
                                    key_type=args.key, login=login, out=out)
    if args.certificate_command == "list":
        return await list_command(config, args.company, login=login, out=out)
    return await revoke_command(config, args.company, args.serial, reason=args.reason, login=login, out=out)
