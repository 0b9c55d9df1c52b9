"""A company's KSeF credentials, read from the files the config names (DESIGN.md config contract).

Files are read each time a company (re)connects, so a person who replaces an expired token file or a
renewed certificate sees the company resume at its next hold retry, without a restart. Errors are
`CredentialsError` naming the file and the fix; nothing secret is ever put into a message or a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from ksefd.config import Company
from ksefd.ksef.auth import ContextIdentifier, Credentials
from ksefd.ksef.client import KsefContext
from ksefd.ksef.credentials import KsefToken, load_certificate, load_pkcs12
from ksefd.ksef.errors import CredentialsError
from ksefd.ksef.models import ContextLimits
from ksefd.ksef.ratelimit import adopt_server_limits

from .runtime import Runtime

log = structlog.get_logger("ksefd.daemon.credentials")

_PKCS12 = (".p12", ".pfx")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"cannot read the {what} {path}: {exc.strerror or exc}; check the path and that "
                               f"ksefd may read it") from exc
    except UnicodeDecodeError as exc:
        raise CredentialsError(f"the {what} {path} is not text (UTF-8); save the token as plain text") from exc


def load_credentials(company: Company) -> Credentials:
    files = company.credentials
    if files.token_file is not None:
        text = _read_text(files.token_file, "token file")
        try:
            return KsefToken.parse(text)
        except CredentialsError as exc:
            raise CredentialsError(f"{files.token_file}: {exc}") from exc
    if files.certificate is not None:
        password: bytes | None = None
        if files.private_key_password_file is not None:
            try:
                password = files.private_key_password_file.read_bytes()
            except OSError as exc:
                raise CredentialsError(f"cannot read the password file {files.private_key_password_file}: "
                                       f"{exc.strerror or exc}") from exc
        if files.certificate.suffix.lower() in _PKCS12:
            return load_pkcs12(files.certificate, password)
        return load_certificate(files.certificate, files.private_key, password)
    raise CredentialsError(f"company {company.name} has neither token_file nor certificate; add one to the config")


@dataclass
class Connection:
    context: KsefContext
    limits: ContextLimits


async def connect(runtime: Runtime, company: Company) -> Connection:
    """Log in to the company's NIP context, adopt the rate limits KSeF reports for it (§7: on TEST they can
    differ from PRD) and read its session limits (§14.5). Raises KsefError subclasses (retry.classify)."""
    credentials = load_credentials(company)
    client = runtime.client_for(company)
    context = client.context(ContextIdentifier.nip(company.nip), credentials)
    await context.authenticate()
    await adopt_server_limits(runtime.limiter, context.auth)
    limits = await context.limits()
    log.info("daemon.connected", company=company.name, nip=company.nip,
             online_cap=limits.online_session.max_invoices, batch_cap=limits.batch_session.max_invoices)
    return Connection(context, limits)
