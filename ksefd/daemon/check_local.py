"""The checks of `ksefd check` that need no network: folders, the state database, credential files and
their expiry (PROTOCOL.md §9.1 for tokens, §9.3 for certificates)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import tempfile
from pathlib import Path

from ksefd.config import Company, Config
from ksefd.ksef import CertificateCredentials, Credentials, CredentialsError, KsefToken
from ksefd.store.migrations import MIGRATIONS

from .check_report import CheckReport, CompanyCheck
from .connection import load_credentials

# PROTOCOL.md §9.1 and §15: the regulation ends KSeF-token login on 31.12.2026; from 1.1.2027 certificates.
TOKEN_LOGIN_LAST_DAY = dt.date(2026, 12, 31)
# MF advises renewing a certificate two months ahead (issue #12 item 7).
CERTIFICATE_WARNING_DAYS = 60
CERTIFICATE_FIX = ("log in to the KSeF web app (Aplikacja Podatnika) with your qualified signature or trusted profile, "
                   "request a new KSeF certificate of type Authentication (Certyfikaty > Wnioskuj), save the .crt and "
                   ".key files and point certificate / private_key (and private_key_password_file) of this company "
                   "at them; ksefd picks the new files up at its next login, no restart needed")
TOKEN_FIX = ("move this company to a KSeF certificate before 31.12.2026: request a KSeF certificate of type "
             "Authentication in the KSeF web app and set certificate, private_key and private_key_password_file "
             "instead of token_file")


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
        return None if why is None else f"{folder} is not writable ({why})"
    if folder.exists():
        return f"{folder} exists but is not a folder"
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return None          # ksefd creates it at its first start
    return f"{folder} does not exist and cannot be created ({parent} is not writable)"


FOLDER_FIX = ("create the folder and give the account ksefd runs as write access to it (systemd: user ksefd, "
              "e.g. install -d -o ksefd -g ksefd PATH; under systemd also list it in ReadWritePaths=); "
              "run ksefd check as that account: sudo -u ksefd ksefd check -c CONFIG")


def check_general(report: CheckReport, config: Config) -> None:
    report.add("ok", "config", f"{config.source} loaded: {len(config.companies)} compan"
                               f"{'y' if len(config.companies) == 1 else 'ies'}")
    problem = folder_problem(config.data_dir)
    if problem:
        report.add("error", "folders", f"data_dir: {problem}", FOLDER_FIX.replace("PATH", str(config.data_dir)))
    else:
        report.add("ok", "folders", f"data_dir {config.data_dir} is writable")
    check_state_db(report, config.state_db)


def check_state_db(report: CheckReport, path: Path) -> None:
    if not path.exists():
        problem = folder_problem(path.parent)
        if problem:
            report.add("error", "state_db", f"{path} cannot be created: {problem}",
                       FOLDER_FIX.replace("PATH", str(path.parent)))
        else:
            report.add("ok", "state_db", f"{path} does not exist yet; ksefd creates it at its first start")
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
        report.add("error", "state_db", f"{path} cannot be opened: {exc}",
                   "check the file's owner and permissions (the account ksefd runs as must read and write it and "
                   "its folder); if it is damaged, restore it from a backup")
        return
    if verdict != "ok":
        report.add("error", "state_db", f"{path} is damaged (SQLite quick_check: {verdict})",
                   "stop ksefd and restore the state database from a backup")
    elif version > len(MIGRATIONS):
        report.add("error", "state_db", f"{path} has schema version {version}, newer than this ksefd "
                                        f"({len(MIGRATIONS)})", "upgrade ksefd to the version that wrote it")
    elif not os.access(path, os.W_OK) or _probe(path.parent) is not None:
        report.add("error", "state_db", f"{path} or its folder is not writable",
                   FOLDER_FIX.replace("PATH", str(path.parent)))
    else:
        pending = len(MIGRATIONS) - version
        note = f"; {pending} migration(s) will run at the next start" if pending else ""
        report.add("ok", "state_db", f"{path} opens (schema {version}){note}")


def check_folders(row: CompanyCheck, company: Company) -> None:
    folders = company.folders
    wanted = ([("outbox", folders.outbox), ("sent", folders.sent), ("rejected", folders.rejected)]
              if company.send else []) + ([("inbox", folders.inbox)] if company.receive else [])
    for name, folder in wanted:
        problem = folder_problem(folder)
        if problem:
            row.add("error", "folders", f"{name}: {problem}", FOLDER_FIX.replace("PATH", str(folder)))


def check_credentials(row: CompanyCheck, company: Company, today: dt.date) -> Credentials | None:
    """Load the company's credentials and judge their expiry; None when they cannot be used."""
    try:
        credentials = load_credentials(company)
    except CredentialsError as exc:
        row.add("error", "credentials", str(exc), "fix the file named above; see config.example.toml for the keys")
        return None
    if isinstance(credentials, KsefToken):
        return _judge_token(row, company, credentials, today)
    return _judge_certificate(row, company, credentials, today)


def _judge_token(row: CompanyCheck, company: Company, token: KsefToken, today: dt.date) -> KsefToken | None:
    row.identity = f"token {token.reference_number}"
    row.expires, row.days_left = TOKEN_LOGIN_LAST_DAY.isoformat(), (TOKEN_LOGIN_LAST_DAY - today).days
    expected = f"nip-{company.nip}"
    if token.context_part.lower() != expected:
        row.add("error", "credentials",
                f"{company.credentials.token_file}: this token was issued for {token.context_part}, the company is "
                f"NIP {company.nip}", f"put the token generated in the context of NIP {company.nip} into this file, "
                                      f"or correct nip in the config")
        return None
    when = "ended" if row.days_left < 0 else f"ends in {row.days_left} days"
    row.add("warning", "expiry", f"logs in with a KSeF token: token login {when} (31.12.2026, PROTOCOL.md §9.1)",
            TOKEN_FIX)
    return token


def _judge_certificate(row: CompanyCheck, company: Company, cert: CertificateCredentials, today: dt.date
                       ) -> CertificateCredentials | None:
    row.identity = f"certificate {cert.identity}"
    self_signed = cert.certificate.issuer == cert.certificate.subject
    if self_signed and company.base_url is None and company.environment != "test":
        # PROTOCOL.md §1, §3.3: only TEST accepts self-signed certificates; DEMO and PROD check the chain.
        row.add("error", "credentials", f"the certificate {cert.source} is self-signed: it works only on KSeF TEST, "
                                        f"this company is configured for {company.environment.upper()}",
                f"use a KSeF certificate issued by the {company.environment.upper()} KSeF web app (or a qualified "
                f"certificate), or set environment = \"test\" if this company is meant for TEST")
        return None
    not_after = cert.certificate.not_valid_after_utc.date()
    not_before = cert.certificate.not_valid_before_utc.date()
    row.expires, row.days_left = not_after.isoformat(), (not_after - today).days
    if today > not_after:
        row.add("error", "expiry", f"the certificate {cert.source} expired on {not_after}", CERTIFICATE_FIX)
        return None
    if today < not_before:
        row.add("error", "expiry", f"the certificate {cert.source} is valid only from {not_before}",
                "wait until then, or use the certificate that is valid now")
        return None
    if row.days_left <= CERTIFICATE_WARNING_DAYS:
        row.add("warning", "expiry", f"the certificate {cert.source} expires on {not_after} "
                                     f"(in {row.days_left} days)", CERTIFICATE_FIX)
    return cert
