"""KSeF verification QR codes (PROTOCOL.md §8.5, §8.6): the links and their images.

KOD I lets anyone check an invoice in KSeF; it goes on every invoice visualisation, labelled with the
KSeF number or, before one is known, "OFFLINE". KOD II proves who issued an offline invoice: the link
is signed with the private key of the issuer's KSeF certificate of type Offline, and labelled
"CERTYFIKAT". Both hashes are the invoice's SHA-256 (the same bytes as `invoiceHash`) in Base64URL
without padding (§13.6).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .environments import ENVIRONMENTS

# PROTOCOL.md §1, QR verification host per environment (environments.py holds the URLs).
QR_HOSTS = {name: urlsplit(env.qr_url).netloc for name, env in ENVIRONMENTS.items()}
CONTEXT_TYPES = ("Nip", "InternalId", "NipVatUe", "PeppolId")
OFFLINE_LABEL = "OFFLINE"
CERTIFICATE_LABEL = "CERTYFIKAT"

_NIP_RE = re.compile(r"^\d{10}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?$")
_SERIAL_RE = re.compile(r"^[0-9A-F]+$")

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def qr_host(environment_or_host: str) -> str:
    """`test`/`demo`/`prod` -> the QR host of that environment; anything else must be a host name."""
    host = QR_HOSTS.get(environment_or_host.lower(), environment_or_host)
    host = host.removeprefix("https://").rstrip("/")
    if not _HOST_RE.match(host):
        raise ValueError(f"QR host {environment_or_host!r} is neither test/demo/prod nor a host name "
                         "like qr-test.ksef.mf.gov.pl")
    return host


def hash_b64url(invoice_hash: bytes | str) -> str:
    """The invoice hash for a QR link: raw 32 bytes or the Base64 `invoiceHash` -> Base64URL, no '='."""
    if isinstance(invoice_hash, str):
        try:
            raw = base64.b64decode(invoice_hash, validate=True)
        except binascii.Error:
            raise ValueError(f"invoice hash {invoice_hash!r} is not Base64 (expected KSeF's invoiceHash, "
                             "44 characters)") from None
    else:
        raw = invoice_hash
    if len(raw) != 32:
        raise ValueError(f"an invoice hash is a SHA-256 of 32 bytes, got {len(raw)} bytes")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def invoice_hash_of(invoice_xml: bytes) -> bytes:
    """SHA-256 of the exact bytes sent (never re-serialised, §13.6)."""
    return hashlib.sha256(invoice_xml).digest()


def _check_nip(nip: str, what: str) -> None:
    if not _NIP_RE.match(nip):
        raise ValueError(f"{what} {nip!r} must be a NIP of 10 digits without dashes or a country prefix")


def invoice_link(host: str, seller_nip: str, issue_date: dt.date, invoice_hash: bytes | str) -> str:
    """KOD I: https://{host}/invoice/{sellerNip}/{P_1 as DD-MM-YYYY}/{hash} (PROTOCOL.md §8.5).

    `issue_date` is the invoice's P_1; `invoice_hash` the raw SHA-256 or KSeF's Base64 `invoiceHash`."""
    _check_nip(seller_nip, "seller NIP")
    return (f"https://{qr_host(host)}/invoice/{seller_nip}/{issue_date.strftime('%d-%m-%Y')}/"
            f"{hash_b64url(invoice_hash)}")


def certificate_serial_hex(certificate: x509.Certificate) -> str:
    """The serial as KSeF prints it: uppercase hex of the serial's bytes (e.g. 01F20A5D352AE590)."""
    serial = certificate.serial_number
    length = max(1, (serial.bit_length() + 7) // 8)
    return f"{serial:0{2 * length}X}"


@dataclass(frozen=True)
class CertificateLinkParts:
    """What goes into a KOD II link, before signing."""

    host: str
    context_type: str          # the issuer's auth context: Nip | InternalId | NipVatUe | PeppolId
    context_value: str
    seller_nip: str
    certificate_serial: str    # uppercase hex
    invoice_hash: str          # Base64URL, no padding

    def signed_text(self) -> str:
        """The UTF-8 string that is signed: the link without `https://` and without the signature."""
        return (f"{self.host}/certificate/{self.context_type}/{self.context_value}/{self.seller_nip}/"
                f"{self.certificate_serial}/{self.invoice_hash}")


def certificate_link_parts(host: str, context_type: str, context_value: str, seller_nip: str,
                           certificate_serial: str, invoice_hash: bytes | str) -> CertificateLinkParts:
    if context_type not in CONTEXT_TYPES:
        raise ValueError(f"context type {context_type!r} must be one of {', '.join(CONTEXT_TYPES)}")
    if not context_value or "/" in context_value or any(c.isspace() for c in context_value):
        raise ValueError(f"context value {context_value!r} must be a non-empty identifier without '/' or spaces")
    _check_nip(seller_nip, "seller NIP")
    serial = certificate_serial.upper()
    if not _SERIAL_RE.match(serial):
        raise ValueError(f"certificate serial {certificate_serial!r} must be hexadecimal, e.g. 01F20A5D352AE590")
    return CertificateLinkParts(qr_host(host), context_type, context_value, seller_nip, serial,
                                hash_b64url(invoice_hash))


def sign_text(text: str, private_key: SigningKey) -> bytes:
    """RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) or ECDSA P-256 as IEEE P1363 r||s (§8.6, §2.2)."""
    data = text.encode("utf-8")
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < 2048:
            raise ValueError(f"KOD II needs an RSA key of at least 2048 bits, this one has {private_key.key_size}")
        return private_key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                                hashes.SHA256())
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"KOD II needs an EC key on P-256 (secp256r1), this one is on {private_key.curve.name}")
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    raise TypeError(f"KOD II is signed with an RSA or EC private key, not {type(private_key).__name__}")


def check_offline_certificate(certificate: x509.Certificate, private_key: SigningKey) -> None:
    """Refuse what KSeF would refuse on scan: a key that is not the certificate's, or an
    Authentication certificate (KOD II must be signed with an Offline one, keyUsage Non-Repudiation)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        raise ValueError("the private key does not belong to the certificate given for KOD II")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return                                   # e.g. a self-signed test certificate: nothing to check
    if not usage.content_commitment:
        raise ValueError("this certificate is not of type Offline (its keyUsage lacks Non-Repudiation); "
                         "KOD II must be signed with a KSeF certificate of type Offline, never an "
                         "Authentication one (PROTOCOL.md §8.6)")


def certificate_link(host: str, context_type: str, context_value: str, seller_nip: str,
                     certificate: x509.Certificate, private_key: SigningKey, invoice_hash: bytes | str) -> str:
    """KOD II: https://{host}/certificate/{ctxType}/{ctxValue}/{sellerNip}/{serial}/{hash}/{signature}."""
    check_offline_certificate(certificate, private_key)
    parts = certificate_link_parts(host, context_type, context_value, seller_nip,
                                   certificate_serial_hex(certificate), invoice_hash)
    signature = base64.urlsafe_b64encode(sign_text(parts.signed_text(), private_key)).rstrip(b"=").decode("ascii")
    return f"https://{parts.signed_text()}/{signature}"


def invoice_label(ksef_number: str | None) -> str:
    """The text under KOD I: the KSeF number once known, else OFFLINE (§8.5)."""
    return ksef_number if ksef_number else OFFLINE_LABEL


def qr_png(link: str, label: str, scale: int = 5) -> bytes:
    """The QR code of `link` as a PNG with `label` centred underneath (at least 5 px per module)."""
    from .qr_image import render_png  # segno only when a QR code is drawn (issue #16: idle memory)

    return render_png(link, label, scale=scale)


def qr_svg(link: str, label: str, scale: int = 5) -> str:
    """The QR code of `link` as an SVG document with `label` as text underneath."""
    from .qr_image import render_svg

    return render_svg(link, label, scale=scale)
