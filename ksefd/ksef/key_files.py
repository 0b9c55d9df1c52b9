"""Writing the private key of a new KSeF certificate and its certificate (PROTOCOL.md §9.3): the key only as
encrypted PKCS#8 PEM with a password read from a file, every file created 0600 and replaced atomically
(temporary file in the same folder, fsync, rename, fsync of the folder), so a crash leaves the old file or the
new one, never half of one. Nothing here logs a key or a password.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ksefd.i18n import N_

from .errors import CredentialsError
from .texts import said

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def write_private(path: Path, data: bytes) -> None:
    """`data` into `path`, mode 0600, atomically."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)           # whatever the umask did
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_password(path: Path) -> bytes:
    """The password in a file, without the newline an editor adds; an empty file is an error."""
    try:
        data = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise CredentialsError(said(N_("cannot read the password file {path}: {error}"), path=str(path),
                                    error=str(exc.strerror or exc))) from exc
    if not data:
        raise CredentialsError(said(N_("the password file {path} is empty; put the private key's password in it"),
                                    path=str(path)))
    return data


def ensure_password_file(path: Path) -> bytes:
    """The password in `path`; a new random one (0600) when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode("ascii") + b"\n")
    return read_password(path)


def encrypted_key_pem(key: PrivateKey, password: bytes) -> bytes:
    """PKCS#8 PEM encrypted with the best algorithm `cryptography` offers (PBES2, AES-256-CBC)."""
    if not password:
        raise CredentialsError(said(N_("a private key is never written unencrypted: the password is empty")))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password))


def write_key(path: Path, key: PrivateKey, password: bytes) -> None:
    write_private(path, encrypted_key_pem(key, password))


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    write_private(path, certificate.public_bytes(serialization.Encoding.PEM))
