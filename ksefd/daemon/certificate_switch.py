"""The files side of a certificate renewal (certificate_renewal.py): the successor waits beside the configured
files as `<stem>.next<suffix>`; the switch first keeps the old pair as `<stem>.<old serial><suffix>`, then puts
the successor into the configured paths, so every company that names those files (one person's certificate used
for many companies) logs in with it at its next connection, without a config change. Each file is replaced
atomically (key_files.write_private) and every step may be repeated after a crash: an archive is written only
once, and replacing a file with the successor again changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ksefd.ksef import key_files, load_private_key


@dataclass(frozen=True)
class CertificateFiles:
    certificate: Path
    private_key: Path
    password_file: Path


def next_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.next{path.suffix}")


def archive_path(path: Path, serial: str) -> Path:
    return path.with_name(f"{path.stem}.{serial}{path.suffix}")


def _archive(path: Path, serial: str) -> None:
    kept = archive_path(path, serial)
    if not kept.exists():
        key_files.write_private(kept, path.read_bytes())


def switch(files: list[CertificateFiles], primary: CertificateFiles, old_serial: str,
           halfway: Callable[[], None] | None = None) -> None:
    """Put the successor (primary's .next files) into every configured pair. `halfway` is called between the key
    and the certificate of the first pair (tests simulate a crash there)."""
    password = key_files.read_password(primary.password_file)
    key = load_private_key(next_path(primary.private_key).read_bytes(), password, str(next_path(primary.private_key)))
    certificate = next_path(primary.certificate).read_bytes()
    for pair in files:
        _archive(pair.certificate, old_serial)
        _archive(pair.private_key, old_serial)
    for index, pair in enumerate(files):
        key_files.write_key(pair.private_key, key, key_files.read_password(pair.password_file))
        if index == 0 and halfway is not None:
            halfway()
        key_files.write_private(pair.certificate, certificate)


def remove_next(primary: CertificateFiles) -> None:
    for path in (next_path(primary.certificate), next_path(primary.private_key)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
