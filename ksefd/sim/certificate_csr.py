"""Checks of a certificate signing request sent to POST /certificates/enrollments (PROTOCOL.md §9.3, §15;
openapi.json: key types, signature algorithms and the 400 table of the operation).

Order and codes:
* not Base64, not a DER PKCS#10, or a bad signature -> 25004 "Niepoprawny format CSR lub niepoprawny podpis CSR";
* a signature algorithm other than RSA PKCS#1 v1.5, RSA-PSS or ECDSA with SHA-1/256/384/512 -> 25011;
* an ECDSA AlgorithmIdentifier with parameters (e.g. NULL; RFC 5758 says they MUST be absent) -> 25004;
* a key other than RSA of exactly 2048 bits or EC on P-256 -> 25010;
* a subject that is not exactly the DN of GET /certificates/enrollments/data (an attribute missing, extra or
  different, e.g. no givenName/surname for a person) -> 25003;
* the right values in the wrong ASN.1 string type (names, uniqueIdentifier and organizationIdentifier must be
  UTF8String, countryName and serialNumber PrintableString) -> 25004. [INFER] PROTOCOL.md §15 lists the string
  types and the ECDSA parameters as field pitfalls answered with 25004; the text in the CSR does match, its
  encoding does not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import der
from .errors import KsefException

# DN attributes of CertificateEnrollmentDataResponse: JSON name -> (OID, the ASN.1 string type KSeF expects).
ATTRIBUTES: dict[str, tuple[str, int]] = {
    "commonName": ("2.5.4.3", der.UTF8_STRING),
    "countryName": ("2.5.4.6", der.PRINTABLE_STRING),
    "givenName": ("2.5.4.42", der.UTF8_STRING),
    "surname": ("2.5.4.4", der.UTF8_STRING),
    "serialNumber": ("2.5.4.5", der.PRINTABLE_STRING),
    "uniqueIdentifier": ("2.5.4.45", der.UTF8_STRING),
    "organizationName": ("2.5.4.10", der.UTF8_STRING),
    "organizationIdentifier": ("2.5.4.97", der.UTF8_STRING),
}
NAMES_BY_OID = {oid: name for name, (oid, _) in ATTRIBUTES.items()}

RSA_PSS = "1.2.840.113549.1.1.10"
ECDSA_PREFIX = "1.2.840.10045.4."
# openapi.json POST /certificates/enrollments: RSA PKCS#1 v1.5, RSA-PSS, ECDSA; SHA-1, SHA-256, SHA-384, SHA-512.
SIGNATURE_ALGORITHMS = {
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption", "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption", "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    RSA_PSS: "RSASSA-PSS", "1.2.840.10045.4.1": "ecdsa-with-SHA1", "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384", "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
}
PSS_HASHES = {"sha1", "sha256", "sha384", "sha512"}


@dataclass(frozen=True)
class AcceptedCsr:
    csr: x509.CertificateSigningRequest
    der: bytes
    public_key_hash: str          # SHA-256 of the SubjectPublicKeyInfo, hex: "already certified" is about this


def public_key_hash(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KsefException(25004, ["csr: wartość nie jest poprawnym Base64 (oczekiwany PKCS#10 w DER, "
                                    "zakodowany Base64, bez nagłówków PEM)."]) from exc


def _load(raw: bytes) -> tuple[x509.CertificateSigningRequest, der.CsrShape]:
    try:
        shape = der.csr_shape(raw)
        csr = x509.load_der_x509_csr(raw)
    except ValueError as exc:
        raise KsefException(25004, [f"csr: nie jest poprawnym żądaniem PKCS#10 w formacie DER ({exc})."]) from exc
    return csr, shape


def _check_algorithm(csr: x509.CertificateSigningRequest, shape: der.CsrShape) -> None:
    name = SIGNATURE_ALGORITHMS.get(shape.signature_oid)
    if name is None:
        raise KsefException(25011, [f"Algorytm podpisu {shape.signature_oid} nie jest dozwolony; dozwolone: RSA "
                                    "PKCS#1 v1.5, RSA-PSS, ECDSA z SHA-1/256/384/512."])
    if shape.signature_oid == RSA_PSS:
        try:
            hash_name = csr.signature_hash_algorithm.name if csr.signature_hash_algorithm else ""
        except Exception:      # unsupported PSS parameters
            hash_name = ""
        if hash_name not in PSS_HASHES:
            raise KsefException(25011, [f"RSA-PSS z funkcją skrótu {hash_name or '(nieznaną)'} nie jest dozwolony."])
    if shape.signature_oid.startswith(ECDSA_PREFIX) and shape.signature_parameters is not None:
        raise KsefException(25004, [f"AlgorithmIdentifier podpisu {name} zawiera parametry (znacznik ASN.1 "
                                    f"0x{shape.signature_parameters.tag:02X}); dla ECDSA parametry muszą być "
                                    "pominięte (RFC 5758)."])


def _check_key(csr: x509.CertificateSigningRequest) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = csr.public_key()
    except ValueError as exc:
        raise KsefException(25010, [f"Nieobsługiwany klucz publiczny: {exc}"]) from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size != 2048:
            raise KsefException(25010, [f"Klucz RSA ma {key.key_size} bitów; wymagane dokładnie 2048."])
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KsefException(25010, [f"Klucz EC na krzywej {key.curve.name}; wymagana NIST P-256 (secp256r1)."])
        return key
    raise KsefException(25010, [f"Klucz typu {type(key).__name__} nie jest dozwolony; dozwolone RSA 2048 i EC P-256."])


def _check_signature(csr: x509.CertificateSigningRequest) -> None:
    try:
        valid = csr.is_signature_valid
    except Exception as exc:     # an algorithm/key combination the verifier refuses
        raise KsefException(25004, [f"Nie można zweryfikować podpisu CSR: {exc}"]) from exc
    if not valid:
        raise KsefException(25004, ["Podpis CSR jest nieprawidłowy (CSR podpisany innym kluczem niż zawarty)."])


def _check_subject(csr: x509.CertificateSigningRequest, shape: der.CsrShape, expected: dict[str, str]) -> None:
    found: dict[str, str] = {}
    for attribute in csr.subject:
        name = NAMES_BY_OID.get(attribute.oid.dotted_string, attribute.oid.dotted_string)
        if name in found:
            raise KsefException(25003, [f"Atrybut {name} występuje w CSR więcej niż raz."])
        value = attribute.value
        found[name] = value if isinstance(value, str) else value.hex()
    problems = [f"brak {n}={v!r}" for n, v in expected.items() if n not in found]
    problems += [f"nadmiarowy {n}={v!r}" for n, v in found.items() if n not in expected]
    problems += [f"{n}={found[n]!r} zamiast {v!r}" for n, v in expected.items() if n in found and found[n] != v]
    if problems:
        raise KsefException(25003, ["Temat (DN) CSR musi być dokładnie taki jak w GET /certificates/enrollments/"
                                    f"data: {'; '.join(problems)}."])
    for oid, tag in shape.subject:
        known = NAMES_BY_OID.get(oid)
        if known is not None and tag != ATTRIBUTES[known][1]:
            raise KsefException(25004, [f"Atrybut {known} zakodowany jako {der.TAG_NAMES.get(tag, hex(tag))}; "
                                        f"wymagany {der.TAG_NAMES[ATTRIBUTES[known][1]]}."])


def check_csr(text: str, expected_subject: dict[str, str]) -> AcceptedCsr:
    """Everything KSeF checks synchronously on the CSR; raises KsefException with the documented code."""
    raw = _decode(text)
    csr, shape = _load(raw)
    _check_algorithm(csr, shape)
    key = _check_key(csr)
    _check_signature(csr)
    _check_subject(csr, shape, expected_subject)
    return AcceptedCsr(csr, raw, public_key_hash(key))
