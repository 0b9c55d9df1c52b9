"""The checks of `ksefd check` that need no network: folders, the state database, credential files and
their expiry (PROTOCOL.md §9.1 for tokens, §9.3 for certificates)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import tempfile
from pathlib import Path

from ksefd.config import Company, Config
from ksefd.i18n import _, counted
from ksefd.ksef import CertificateCredentials, Credentials, CredentialsError, KsefToken
from ksefd.store.migrations import MIGRATIONS

from .check_report import CheckReport, CompanyCheck
from .connection import load_credentials
from .words import error_text

# PROTOCOL.md §9.1 and §15: the regulation ends KSeF-token login on 31.12.2026; from 1.1.2027 certificates.
TOKEN_LOGIN_LAST_DAY = dt.date(2026, 12, 31)
# MF advises renewing a certificate two months ahead (issue #12 item 7).
CERTIFICATE_WARNING_DAYS = 60


def certificate_fix() -> str:
    return _("log in to the KSeF web app (Aplikacja Podatnika) with your qualified signature or trusted profile, "
             "request a new KSeF certificate of type Authentication (Certyfikaty > Wnioskuj), save the .crt and "
             ".key files and point certificate / private_key (and private_key_password_file) of this company "
             "at them; ksefd picks the new files up at its next login, no restart needed")


def token_fix() -> str:
    return _("move this company to a KSeF certificate before 31.12.2026: request a KSeF certificate of type "
             "Authentication in the KSeF web app and set certificate, private_key and private_key_password_file "
             "instead of token_file")


def day(date: dt.date) -> str:
    """A date as people in Poland write it: 31.12.2026."""
    return f"{date:%d.%m.%Y}"


def _probe(folder: Path) -> str | None:
    """None if a file can be created and removed in `folder`, else why not."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ksefd-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def folder_problem(folder: Path) -> str | None:
    """What is wrong with a folder ksefd must write to, or None when it is fine."""
    if folder.is_dir():
        why = _probe(folder)
        return None if why is None else _("{folder} is not writable ({why})", folder=folder, why=why)
    if folder.exists():
        return _("{folder} exists but is not a folder", folder=folder)
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return None          # ksefd creates it at its first start
    return _("{folder} does not exist and cannot be created ({parent} is not writable)", folder=folder,
             parent=parent)


def folder_fix(path: Path) -> str:
    return _("create the folder and give the account ksefd runs as write access to it (systemd: user ksefd, "
             "e.g. install -d -o ksefd -g ksefd {path}; under systemd also list it in ReadWritePaths=); "
             "run ksefd check as that account: sudo -u ksefd ksefd check -c CONFIG", path=path)


def check_general(report: CheckReport, config: Config) -> None:
    count = len(config.companies)
    report.add("ok", "config", _("{config} loaded: 1 company", config=config.source) if count == 1
               else _("{config} loaded: companies: {count}", config=config.source, count=count))
    problem = folder_problem(config.data_dir)
    if problem:
        report.add("error", "folders", f"data_dir: {problem}", folder_fix(config.data_dir))
    else:
        report.add("ok", "folders", _("data_dir {path} is writable", path=config.data_dir))
    check_state_db(report, config.state_db)


def check_state_db(report: CheckReport, path: Path) -> None:
    if not path.exists():
        problem = folder_problem(path.parent)
        if problem:
            report.add("error", "state_db", _("{path} cannot be created: {problem}", path=path, problem=problem),
                       folder_fix(path.parent))
        else:
            report.add("ok", "state_db", _("{path} does not exist yet; ksefd creates it at its first start",
                                           path=path))
        return
    try:
        # Read-only: a check must not migrate or lock the database of a running daemon.
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            verdict = str(conn.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        report.add("error", "state_db", _("{path} cannot be opened: {error}", path=path, error=exc),
                   _("check the file's owner and permissions (the account ksefd runs as must read and write it and "
                     "its folder); if it is damaged, restore it from a backup"))
        return
    if verdict != "ok":
        report.add("error", "state_db", _("{path} is damaged (SQLite quick_check: {verdict})", path=path,
                                          verdict=verdict),
                   _("stop ksefd and restore the state database from a backup"))
    elif version > len(MIGRATIONS):
        report.add("error", "state_db", _("{path} has schema version {version}, newer than this ksefd ({known})",
                                          path=path, version=version, known=len(MIGRATIONS)),
                   _("upgrade ksefd to the version that wrote it"))
    elif not os.access(path, os.W_OK) or _probe(path.parent) is not None:
        report.add("error", "state_db", _("{path} or its folder is not writable", path=path),
                   folder_fix(path.parent))
    else:
        pending = len(MIGRATIONS) - version
        note = _("; migrations to run at the next start: {count}", count=pending) if pending else ""
        report.add("ok", "state_db", _("{path} opens (schema {version}){note}", path=path, version=version,
                                       note=note))


def check_folders(row: CompanyCheck, company: Company) -> None:
    folders = company.folders
    wanted = ([("outbox", folders.outbox), ("sent", folders.sent), ("rejected", folders.rejected)]
              if company.send else []) + ([("inbox", folders.inbox)] if company.receive else [])
    for name, folder in wanted:
        problem = folder_problem(folder)
        if problem:
            row.add("error", "folders", f"{name}: {problem}", folder_fix(folder))


def check_credentials(row: CompanyCheck, company: Company, today: dt.date) -> Credentials | None:
    """Load the company's credentials and judge their expiry; None when they cannot be used."""
    try:
        credentials = load_credentials(company)
    except CredentialsError as exc:
        row.add("error", "credentials", error_text(exc),
                _("fix the file named above; see config.example.toml for the keys"))
        return None
    if isinstance(credentials, KsefToken):
        return _judge_token(row, company, credentials, today)
    return _judge_certificate(row, company, credentials, today)


def _judge_token(row: CompanyCheck, company: Company, token: KsefToken, today: dt.date) -> KsefToken | None:
    row.identity = _("token {reference}", reference=token.reference_number)
    row.expires, row.days_left = TOKEN_LOGIN_LAST_DAY.isoformat(), (TOKEN_LOGIN_LAST_DAY - today).days
    expected = f"nip-{company.nip}"
    if token.context_part.lower() != expected:
        row.add("error", "credentials",
                _("{file}: this token was issued for {issued_for}, the company is NIP {nip}",
                  file=company.credentials.token_file, issued_for=token.context_part, nip=company.nip),
                _("put the token generated in the context of NIP {nip} into this file, or correct nip in the config",
                  nip=company.nip))
        return None
    if row.days_left < 0:
        text = _("logs in with a KSeF token: token login ended on 31.12.2026")
    else:
        text = _("logs in with a KSeF token: token login ends on 31.12.2026, in {days}",
                 days=counted(row.days_left, "day"))
    row.add("warning", "expiry", text, token_fix())
    return token


def _judge_certificate(row: CompanyCheck, company: Company, cert: CertificateCredentials, today: dt.date
                       ) -> CertificateCredentials | None:
    row.identity = _("certificate {identity}", identity=cert.identity)
    self_signed = cert.certificate.issuer == cert.certificate.subject
    if self_signed and company.base_url is None and company.environment != "test":
        # PROTOCOL.md §1, §3.3: only TEST accepts self-signed certificates; DEMO and PROD check the chain.
        env = company.environment.upper()
        row.add("error", "credentials", _("the certificate {file} is self-signed: it works only on KSeF TEST, this "
                                          "company is configured for {environment}", file=cert.source,
                                          environment=env),
                _("use a KSeF certificate issued by the {environment} KSeF web app (or a qualified certificate), or "
                  "set environment = \"test\" if this company is meant for TEST", environment=env))
        return None
    not_after = cert.certificate.not_valid_after_utc.date()
    not_before = cert.certificate.not_valid_before_utc.date()
    row.expires, row.days_left = not_after.isoformat(), (not_after - today).days
    if today > not_after:
        row.add("error", "expiry", _("the certificate {file} expired on {date}", file=cert.source,
                                     date=day(not_after)), certificate_fix())
        return None
    if today < not_before:
        row.add("error", "expiry", _("the certificate {file} is valid only from {date}", file=cert.source,
                                     date=day(not_before)),
                _("wait until then, or use the certificate that is valid now"))
        return None
    if row.days_left <= CERTIFICATE_WARNING_DAYS:
        row.add("warning", "expiry", _("the certificate {file} expires on {date} (in {days})", file=cert.source,
                                       date=day(not_after), days=counted(row.days_left, "day")), certificate_fix())
    return cert
