"""Test-side CSR making, written from PROTOCOL.md §9.3 and §15 with `cryptography` alone (never the client's or
the simulator's code), including the pitfalls real KSeF refuses: wrong ASN.1 string types, NULL parameters in
an ECDSA AlgorithmIdentifier, wrong key sizes and curves, a hash KSeF does not accept."""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

OIDS = {"commonName": NameOID.COMMON_NAME, "countryName": NameOID.COUNTRY_NAME, "givenName": NameOID.GIVEN_NAME,
        "surname": NameOID.SURNAME, "serialNumber": NameOID.SERIAL_NUMBER,
        "uniqueIdentifier": NameOID.X500_UNIQUE_IDENTIFIER, "organizationName": NameOID.ORGANIZATION_NAME,
        "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER}
PRINTABLE = {"countryName", "serialNumber"}

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "ec") -> Key:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:] or 2048))
    raise ValueError(kind)


def subject(data: dict[str, Any], *, types: dict[str, _ASN1Type] | None = None,
            drop: tuple[str, ...] = ()) -> x509.Name:
    attributes = []
    for name, value in data.items():
        if value is None or name in drop:
            continue
        kind = (types or {}).get(name, _ASN1Type.PrintableString if name in PRINTABLE else _ASN1Type.UTF8String)
        attributes.append(x509.NameAttribute(OIDS[name], value, _type=kind))
    return x509.Name(attributes)


def csr_der(data: dict[str, Any], key: Key, *, algorithm: hashes.HashAlgorithm | None = None,
            types: dict[str, _ASN1Type] | None = None, drop: tuple[str, ...] = ()) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder().subject_name(subject(data, types=types, drop=drop))
           .sign(key, algorithm or hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# DER surgery for the ECDSA-with-NULL-parameters pitfall: the signature covers only the request info, so adding
# NULL to the signatureAlgorithm keeps the signature valid, as a broken encoder would produce it.
def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _elements(data: bytes) -> list[tuple[int, bytes, bytes]]:
    found, pos = [], 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        start = pos + 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[start:start + count], "big")
            start += count
        found.append((tag, data[start:start + length], data[pos:start + length]))
        pos = start + length
    return found


def with_null_signature_parameters(der: bytes) -> bytes:
    (_, outer, _), = _elements(der)
    info, algorithm, signature = _elements(outer)
    (oid,) = [raw for _, _, raw in _elements(algorithm[1])]
    return _tlv(0x30, info[2] + _tlv(0x30, oid + b"\x05\x00") + signature[2])


def with_bad_signature(der: bytes) -> bytes:
    """The last byte of the signature changed."""
    return der[:-1] + bytes([der[-1] ^ 0x01])
