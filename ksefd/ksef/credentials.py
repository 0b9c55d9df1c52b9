"""Credentials: a KSeF token, or a certificate with its private key (PROTOCOL.md §3.2, §3.3, §9).

* `KsefToken.parse(text)` cleans what people paste (spaces, newlines, NBSP, zero-width characters, a BOM) and
  refuses a malformed token before any request, saying what is wrong with it. The format, as KSeF issues it
  (`POST /tokens`, OA example): `<reference number>|<context, e.g. nip-5265877635>|<64 hex digits>`.
* `load_certificate(cert_path, key_path, password)` reads what the Ministry's web app hands out: a certificate
  (.crt/.cer, PEM or DER) and a private key (.key, PEM or DER, PKCS#8 or traditional, usually encrypted with a
  password), RSA or EC. `load_pkcs12(path, password)` reads a .p12/.pfx. Errors name the file and the fix.

Secrets never appear in `repr`, `str` or error messages.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ksefd.i18n import N_

from .errors import CredentialsError
from .texts import Words, said

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_REFERENCE = re.compile(r"^\d{8}-[A-Z]{2}-[0-9A-F]{10}-[0-9A-F]{10}-[0-9A-F]{2}$")
_CONTEXT_PART = re.compile(r"^([A-Za-z]+)-(\S+)$")
_SECRET = re.compile(r"^[0-9a-fA-F]{64}$")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")     # the secret, or a piece of it; reference numbers hold 10-hex runs
MAX_TOKEN_LENGTH = 160          # OA InitTokenAuthenticationRequest example; PROTOCOL.md §3.2


def clean_token_text(text: str) -> str:
    """Drop every whitespace (incl. NBSP) and invisible format character (zero-width, BOM, soft hyphen)."""
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) != "Cf")


@dataclass(frozen=True, repr=False)
class KsefToken:
    value: str

    @classmethod
    def parse(cls, text: str) -> KsefToken:
        token = clean_token_text(text)
        problem = token_problem(token)
        if problem:
            raise CredentialsError(said(N_("the KSeF token is malformed: {problem}"), problem=problem))
        return cls(token)

    @property
    def reference_number(self) -> str:
        return self.value.split("|", 1)[0]

    @property
    def context_part(self) -> str:
        """The middle part, e.g. "nip-5265877635": which context the token was issued in."""
        return self.value.split("|")[1]

    def __repr__(self) -> str:
        return f"KsefToken({self.reference_number}|{self.context_part}|<secret>)"

    __str__ = __repr__


def token_problem(token: str) -> Words | None:
    """What is wrong with a cleaned token, in words (texts.py), or None."""
    if not token:
        return said(N_("it is empty"))
    for position, ch in enumerate(token, 1):
        if not (ch.isascii() and ch.isprintable()):
            name = unicodedata.name(ch, "unnamed character")
            return said(N_("it contains {name} ({code}) at position {position}; a KSeF token has only letters, "
                           "digits, '-' and '|'"), name=name, code=f"U+{ord(ch):04X}", position=str(position))
    parts = token.split("|")
    if len(parts) != 3:
        # Two ids for English (1 part, N parts); Polish says "składa się z 1 części" / "z 2 części" for both.
        count = said(N_("1 part")) if len(parts) == 1 else said(N_("{count} parts"), count=str(len(parts)))
        return said(N_("the token has {parts} separated by '|', expected 3 (reference number|context|secret, e.g. "
                       "20251010-EC-…|nip-5265877635|<64 hex digits>); copy the whole token as KSeF showed it"),
                    parts=count)
    reference, context, secret = parts
    if not _REFERENCE.match(reference):
        return said(N_("the first part {part} is not a KSeF reference number (YYYYMMDD-EC-XXXXXXXXXX-XXXXXXXXXX-XX)"),
                    part=_shown(reference))
    if not _CONTEXT_PART.match(context):
        return said(N_("the second part {part} is not a context such as 'nip-5265877635'"), part=_shown(context))
    if not _SECRET.match(secret):
        if len(secret) != 64:
            return said(N_("the third part (the secret) has {count} characters, expected 64 hexadecimal digits"),
                        count=str(len(secret)))
        bad = next(ch for ch in secret if ch not in "0123456789abcdefABCDEF")
        return said(N_("the third part (the secret) contains {character}, expected only hexadecimal digits 0-9 "
                       "a-f"), character=repr(bad))
    if len(token) > MAX_TOKEN_LENGTH:
        return said(N_("it is {count} characters long, at most {most} expected"), count=str(len(token)),
                    most=str(MAX_TOKEN_LENGTH))
    return None


def _shown(part: str) -> str:
    """A misplaced part quoted for the message, with anything that may be (a piece of) the secret hidden:
    parts pasted in the wrong order must not put the secret into a log line or an error report."""
    return repr(_LONG_HEX.sub(lambda m: f"<{len(m.group(0))} hex digits>", part[:80]))


@dataclass(frozen=True, repr=False)
class CertificateCredentials:
    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    source: str = ""                  # file name(s), for messages

    def __repr__(self) -> str:
        return f"CertificateCredentials({self.identity}, source={self.source!r})"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex (the `Fingerprint` identifier, PROTOCOL.md §3.3)."""
        return self.certificate.fingerprint(hashes.SHA256()).hex().upper()

    @property
    def subject_identifier(self) -> tuple[str, str] | None:
        """("Nip"|"Pesel", value) read from the subject as KSeF does (PROTOCOL.md §3.3), or None."""
        subject = self.certificate.subject
        for attr in subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
            text = str(attr.value)
            if found := re.search(r"(PNOPL|PESEL).*?(\d{11})", text):
                return "Pesel", found.group(2)
            if found := re.search(r"(TINPL|NIP).*?(\d{10})", text):
                return "Nip", found.group(2)
        for attr in subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER):
            if found := re.search(r"(VATPL).*?(\d{10})", str(attr.value)):
                return "Nip", found.group(2)
        return None

    @property
    def subject_identifier_type(self) -> str:
        """certificateSubject when the subject names a NIP/PESEL, else certificateFingerprint."""
        return "certificateSubject" if self.subject_identifier else "certificateFingerprint"

    @property
    def identity(self) -> str:
        found = self.subject_identifier
        return f"{found[0]} {found[1]}" if found else f"fingerprint {self.fingerprint[:16]}…"

    def check_valid(self, now: dt.datetime) -> None:
        cert = self.certificate
        if now < cert.not_valid_before_utc:
            raise CredentialsError(said(N_("the certificate {source} is not valid before {time} UTC"),
                                        source=self.source, time=f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}"))
        if now > cert.not_valid_after_utc:
            raise CredentialsError(said(N_("the certificate {source} expired on {date} UTC; request a new KSeF "
                                           "certificate (they last about 2 years)"), source=self.source,
                                        date=f"{cert.not_valid_after_utc:%Y-%m-%d}"))


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None:
        return None
    return password.encode("utf-8") if isinstance(password, str) else password


def _candidate_passwords(password: bytes | None) -> list[bytes | None]:
    # A password file saved by an editor often ends with a newline; try without it too.
    if password is None:
        return [None]
    stripped = password.rstrip(b"\r\n")
    return [password] if stripped == password else [password, stripped]


def load_private_key(data: bytes, password: str | bytes | None, name: str = "the key file") -> PrivateKey:
    """A PEM or DER private key (PKCS#8 or traditional, encrypted or not), RSA >= 2048 or EC >= 256 bits."""
    is_pem = b"-----BEGIN" in data
    loader = serialization.load_pem_private_key if is_pem else serialization.load_der_private_key
    secret = _password_bytes(password)
    error: Exception | None = None
    for candidate in _candidate_passwords(secret):
        try:
            key = loader(data, password=candidate)
            break
        except TypeError as exc:
            if candidate is None:
                raise CredentialsError(said(N_("the private key in {name} is encrypted; give its password"),
                                            name=name)) from exc
            key = loader(data, password=None)      # a password for an unencrypted key: not an error
            break
        except ValueError as exc:
            error = exc
    else:
        if secret is not None and _looks_encrypted(data, is_pem):
            raise CredentialsError(said(N_("wrong password for the private key in {name}: it could not be "
                                           "decrypted (check the password file; the file may also be damaged)"),
                                        name=name)) from error
        raise CredentialsError(said(N_("cannot read a private key from {name}: it is not a PEM or DER private key"),
                                    name=name)) from error
    return _check_key(key, name)


def _looks_encrypted(data: bytes, is_pem: bool) -> bool:
    if is_pem:
        return b"ENCRYPTED" in data
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:
        return True          # "password was not given but private key is encrypted"
    except ValueError:
        return False
    return False


def _check_key(key: object, name: str) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CredentialsError(said(N_("the RSA key in {name} has {bits} bits; KSeF requires at least 2048"),
                                        name=name, bits=str(key.key_size)))
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size < 256:
            raise CredentialsError(said(N_("the EC key in {name} has {bits} bits; KSeF requires at least 256"),
                                        name=name, bits=str(key.curve.key_size)))
        return key
    raise CredentialsError(said(N_("the key in {name} is {kind}; KSeF accepts RSA or EC keys"), name=name,
                                kind=type(key).__name__))


def load_certificates(data: bytes, name: str = "the certificate file") -> list[x509.Certificate]:
    """One or more certificates, PEM (several allowed) or DER."""
    try:
        if b"-----BEGIN" in data:
            found = x509.load_pem_x509_certificates(data)
        else:
            found = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CredentialsError(said(N_("cannot read a certificate from {name}: it is not a PEM or DER X.509 "
                                       "certificate"), name=name)) from exc
    return found


def _spki(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pair(certificates: list[x509.Certificate], key: PrivateKey, source: str) -> CertificateCredentials:
    """Pick the certificate that belongs to `key`; the others become the chain."""
    own = _spki(key.public_key())
    for index, cert in enumerate(certificates):
        if _spki(cert.public_key()) == own:
            chain = tuple(c for i, c in enumerate(certificates) if i != index)
            return CertificateCredentials(cert, key, chain, source)
    raise CredentialsError(said(N_("the private key does not belong to the certificate ({source}); use the .key "
                                   "file saved together with this certificate"), source=source))


def certificate_from_bytes(cert_data: bytes, key_data: bytes, password: str | bytes | None = None, *,
                           cert_name: str = "the certificate", key_name: str = "the private key"
                           ) -> CertificateCredentials:
    certificates = load_certificates(cert_data, cert_name)
    key = load_private_key(key_data, password, key_name)
    return pair(certificates, key, f"{cert_name} + {key_name}")


def _read(path: str | Path, what: Words) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(said(N_("cannot read the {what} {path}: {error}"), what=what, path=str(path),
                                    error=str(exc.strerror or exc))) from exc


def load_certificate(cert_path: str | Path, key_path: str | Path | None = None,
                     password: str | bytes | None = None) -> CertificateCredentials:
    """A certificate file and its private key file (or one PEM holding both when `key_path` is None)."""
    cert_data = _read(cert_path, said(N_("certificate file")))
    key_data = cert_data if key_path is None else _read(key_path, said(N_("private key file")))
    return certificate_from_bytes(cert_data, key_data, password, cert_name=str(cert_path),
                                  key_name=str(key_path or cert_path))


def load_pkcs12(path: str | Path, password: str | bytes | None = None) -> CertificateCredentials:
    """A PKCS#12 (.p12/.pfx) file with the certificate and its private key."""
    data = _read(path, said(N_("PKCS#12 file")))
    secret = _password_bytes(password)
    error: Exception | None = None
    for candidate in _candidate_passwords(secret):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, candidate)
            break
        except ValueError as exc:
            error = exc
    else:
        hint = said(N_("a password is needed")) if secret is None else said(N_("wrong password"))
        raise CredentialsError(said(N_("cannot open the PKCS#12 file {path}: {hint} (or the file is damaged)"),
                                    path=str(path), hint=hint)) from error
    if key is None or cert is None:
        missing = said(N_("private key")) if key is None else said(N_("certificate"))
        raise CredentialsError(said(N_("the PKCS#12 file {path} holds no {what}"), path=str(path), what=missing))
    return pair([cert, *extra], _check_key(key, str(path)), str(path))
