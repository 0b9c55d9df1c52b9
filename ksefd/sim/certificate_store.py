"""KSeF certificates and their enrollments as the simulator keeps them (PROTOCOL.md §9.3), shared by the
routes (certificates.py) and by authentication (auth.py, auth_ops.py: a KSeF certificate at XAdES login).

Tables: `ksef_certificates` (key: serial, 16 hex), `certificate_enrollments` (key: EH reference number),
`certified_keys` (key: SHA-256 of a SubjectPublicKeyInfo already certified), `certificate_limit_overrides`
(key: "type:value" of the subject, POST /testdata/limits/subject/certificate).

A certificate's status is computed, never stored stale: Revoked once revoked, Expired once `validTo` (which
PUT /testdata/certificates/{serial} may shorten) has passed, else Active.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import certificate_csr, permissions
from .certificate_ca import CertificateAuthority
from .clock import iso, parse_iso
from .store import Record, Store
from .world import World

CERTIFICATES = "ksef_certificates"
ENROLLMENTS = "certificate_enrollments"
CERTIFIED_KEYS = "certified_keys"
LIMIT_OVERRIDES = "certificate_limit_overrides"
VALIDITY = dt.timedelta(days=730)        # PROTOCOL.md §9.3, §15: validity observed 2 years

# PROTOCOL.md §7: a NIP may enrol 300 times and hold 100 certificates; a PESEL or fingerprint 12 and 6.
DEFAULT_LIMITS = {"Nip": (300, 100)}
PERSON_LIMITS = (12, 6)

# 460 details of the auth status table (openapi.json AuthenticationOperationStatusResponse).
CERT_REVOKED = "Certyfikat odwołany"
CERT_INVALID = "Nieważny certyfikat"
CERT_INCORRECT = "Niepoprawny certyfikat"


def authority(world: World) -> CertificateAuthority:
    ca = world.services.get("certificate_ca")
    if ca is None:
        ca = world.services["certificate_ca"] = CertificateAuthority(world.store, world.clock)
    assert isinstance(ca, CertificateAuthority)
    return ca


def subject_key(subject: dict[str, str]) -> str:
    return f"{subject['type']}:{permissions.normalize(subject['type'], subject['value'])}"


def subject_limits(store: Store, subject_type: str, subject_value: str) -> tuple[int, int]:
    """(max enrollments, max active certificates) of the subject, TEST overrides applied."""
    enrollments, certificates = DEFAULT_LIMITS.get(subject_type, PERSON_LIMITS)
    override = store.get(LIMIT_OVERRIDES, subject_key({"type": subject_type, "value": subject_value})) or {}
    if override.get("maxEnrollments") is not None:
        enrollments = int(override["maxEnrollments"])
    if override.get("maxCertificates") is not None:
        certificates = int(override["maxCertificates"])
    return enrollments, certificates


def owned_by(store: Store, record: Record, subject_type: str, subject_value: str) -> bool:
    """The record's subject is the caller, or linked to it by a TEST person's NIP<->PESEL (openapi.json revoke)."""
    ids = permissions.identities(store, subject_type, subject_value)
    owner = record["subjectIdentifier"]
    return (owner["type"], permissions.normalize(owner["type"], owner["value"])) in ids


def status(world: World, record: Record) -> str:
    if record.get("revokedAt"):
        return "Revoked"
    if parse_iso(record["validTo"]) <= world.clock.now():
        return "Expired"
    return "Active"


def counts(world: World, subject_type: str, subject_value: str) -> tuple[int, int, int]:
    """(enrollments made, certificates active, enrollments still pending) of the subject."""
    made = pending = 0
    for record in world.store.values(ENROLLMENTS):
        if owned_by(world.store, record, subject_type, subject_value):
            made += 1
            pending += record["status"]["code"] == 100
    active = sum(1 for record in world.store.values(CERTIFICATES)
                 if owned_by(world.store, record, subject_type, subject_value) and status(world, record) == "Active")
    return made, active, pending


def issued_record(world: World, cert: x509.Certificate) -> Record | None:
    """The KSeF certificate record when `cert` is exactly one the simulator's CA issued, else None."""
    if cert.issuer != authority(world).certificate.subject:
        return None
    record = world.store.get(CERTIFICATES, f"{cert.serial_number:016X}")
    if record is None or record["der"] != cert.public_bytes(serialization.Encoding.DER).hex():
        return None
    return record


def login_problem(world: World, serial: str) -> str | None:
    """Why a KSeF certificate cannot log in now (a 460 detail), or None. Only Authentication certificates log in
    (PROTOCOL.md §9.3: an Offline one signs KOD II only)."""
    record = world.store.get(CERTIFICATES, serial)
    if record is None:
        return CERT_INCORRECT
    if record.get("revokedAt"):
        return CERT_REVOKED
    now = world.clock.now()
    if not parse_iso(record["validFrom"]) <= now < parse_iso(record["validTo"]):
        return CERT_INVALID
    if record["type"] != "Authentication":
        return CERT_INCORRECT
    return None


def mark_used(world: World, serial: str) -> None:
    record = world.store.get(CERTIFICATES, serial)
    if record is not None:
        record["lastUseDate"] = iso(world.clock.now())
        world.store.put(CERTIFICATES, serial, record)


def subject_attributes(cert: x509.Certificate) -> dict[str, str]:
    """The DN attributes of CertificateEnrollmentDataResponse found in the login certificate's subject."""
    found: dict[str, str] = {}
    for attribute in cert.subject:
        name = certificate_csr.NAMES_BY_OID.get(attribute.oid.dotted_string)
        if name is not None and name not in found:
            value = attribute.value
            found[name] = value if isinstance(value, str) else value.hex()
    return found


def login_facts(world: World, cert: x509.Certificate) -> dict[str, Any]:
    """What an auth operation remembers of its certificate for the certificate endpoints."""
    record = issued_record(world, cert)
    key = cert.public_key()
    key_hash = certificate_csr.public_key_hash(key) if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) \
        else ""
    return {"subject": subject_attributes(cert), "publicKeyHash": key_hash,
            "ksefSerial": record["certificateSerialNumber"] if record else None}
