"""Where a company's KSeF certificates live on disk and how they are named, shared by `ksefd certificate`
(certificate_cli.py) and the daemon's renewal (certificate_renewal.py).

A new certificate is written beside the one the company logs in with (or beside the config file), as
`<company>-<type>-<UTC time>.key` (encrypted PKCS#8, 0600) and `.crt` (PEM), with the key's password in the
company's existing password file or a new `<company>.pass` (0600). The config keys that point at them are
`certificate`/`private_key`/`private_key_password_file` for Authentication and the `offline_*` ones for Offline.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ksefd.config import Company
from ksefd.i18n import _
from ksefd.ksef import CertificateCredentials, CredentialsError, key_files, load_certificate, load_pkcs12

_PKCS12 = (".p12", ".pfx")
CONFIG_KEYS = {
    "Authentication": ("certificate", "private_key", "private_key_password_file"),
    "Offline": ("offline_certificate", "offline_private_key", "offline_private_key_password_file"),
}


def _password(path: Path | None) -> bytes | None:
    return key_files.read_password(path) if path is not None else None


def _load(certificate: Path, key: Path | None, password_file: Path | None) -> CertificateCredentials:
    password = _password(password_file)
    if certificate.suffix.lower() in _PKCS12:
        return load_pkcs12(certificate, password)
    return load_certificate(certificate, key, password)


def login_credentials(company: Company) -> CertificateCredentials:
    """The certificate the company logs in with (XAdES); a KSeF token cannot enroll (PROTOCOL.md §9.3: 25001)."""
    files = company.credentials
    if files.certificate is None:
        raise CredentialsError(_("company {company} logs in with a KSeF token ({file}); KSeF issues certificates "
                                 "only after a login with a signature: give a qualified certificate or seal with "
                                 "--login-certificate/--login-key/--login-password-file, or set `certificate` and "
                                 "`private_key` for this company in the config", company=company.name,
                                 file=files.token_file))
    return _load(files.certificate, files.private_key, files.private_key_password_file)


def offline_credentials(company: Company) -> CertificateCredentials | None:
    files = company.credentials
    if files.offline_certificate is None:
        return None
    return _load(files.offline_certificate, files.offline_private_key, files.offline_private_key_password_file)


def configured_certificate(company: Company, certificate_type: str) -> Path | None:
    files = company.credentials
    return files.certificate if certificate_type == "Authentication" else files.offline_certificate


@dataclass(frozen=True)
class CertificatePaths:
    certificate: Path
    private_key: Path
    password_file: Path

    def config_values(self, certificate_type: str, base_dir: Path) -> dict[str, str]:
        names = CONFIG_KEYS[certificate_type]
        return {name: _relative(path, base_dir)
                for name, path in zip(names, (self.certificate, self.private_key, self.password_file), strict=True)}


def _relative(path: Path, base_dir: Path) -> str:
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)


def new_paths(company: Company, certificate_type: str, when: dt.datetime, directory: Path) -> CertificatePaths:
    """Fresh file names for a new certificate of the company; the password file is the one already in use."""
    stem = f"{company.name}-{certificate_type.lower()}-{when.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"
    files = company.credentials
    existing = files.private_key_password_file if certificate_type == "Authentication" else (
        files.offline_private_key_password_file or files.private_key_password_file)
    return CertificatePaths(directory / f"{stem}.crt", directory / f"{stem}.key",
                            existing or directory / f"{company.name}.pass")


def default_directory(company: Company, fallback: Path) -> Path:
    """Beside the company's current certificate, else `fallback` (the config file's folder)."""
    current = company.credentials.certificate or company.credentials.offline_certificate
    directory = current.parent if current is not None else fallback
    os.makedirs(directory, exist_ok=True)
    return directory
