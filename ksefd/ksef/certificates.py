"""KSeF certificates (PROTOCOL.md §9.3, §15): limits, enrollment, status, retrieval, listing and revocation.

    manager = context.certificates()                       # KsefContext logged in by XAdES (not a KSeF token)
    issued = await manager.enroll("ksefd Jan 2026", "Authentication", key=new_key("ec"))
    key_files.write_key(path, issued.private_key, password)   # the caller decides where the key lives

The flow of `enroll`: limits -> enrollment data (the DN, copied by KSeF from the login certificate) -> CSR ->
POST /certificates/enrollments -> poll the status -> retrieve the certificate. Each step is a method of its own
too, so the daemon's renewal can record its progress between them and resume after a crash.

The CSR (`build_csr`) avoids the pitfalls KSeF refuses (§15): names, uniqueIdentifier and organizationIdentifier
as UTF8String, countryName and serialNumber as PrintableString, the DN exactly as the enrollment data gives it,
ECDSA signatures without AlgorithmIdentifier parameters (what `cryptography` writes), a fresh key every time.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from .clock import Sleep, aware, poll, real_sleep
from .errors import KsefError, KsefException
from .models import Model, StatusInfo
from .responses import Response

if TYPE_CHECKING:
    from .auth import AuthSession

log = structlog.get_logger("ksefd.ksef.certificates")

CertificateType = Literal["Authentication", "Offline"]
CERTIFICATE_TYPES: tuple[CertificateType, ...] = ("Authentication", "Offline")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# CertificateEnrollmentDataResponse field -> (OID, ASN.1 string type KSeF expects; PROTOCOL.md §15).
DN_ATTRIBUTES: dict[str, tuple[x509.ObjectIdentifier, _ASN1Type]] = {
    "commonName": (NameOID.COMMON_NAME, _ASN1Type.UTF8String),
    "givenName": (NameOID.GIVEN_NAME, _ASN1Type.UTF8String),
    "surname": (NameOID.SURNAME, _ASN1Type.UTF8String),
    "organizationName": (NameOID.ORGANIZATION_NAME, _ASN1Type.UTF8String),
    "organizationIdentifier": (NameOID.ORGANIZATION_IDENTIFIER, _ASN1Type.UTF8String),
    # x500UniqueIdentifier defaults to BIT STRING in `cryptography`; KSeF's own example CSR has UTF8String.
    "uniqueIdentifier": (NameOID.X500_UNIQUE_IDENTIFIER, _ASN1Type.UTF8String),
    "serialNumber": (NameOID.SERIAL_NUMBER, _ASN1Type.PrintableString),
    "countryName": (NameOID.COUNTRY_NAME, _ASN1Type.PrintableString),
}


class CertificateLimit(Model):
    limit: int
    remaining: int


class CertificateLimits(Model):
    can_request: bool
    enrollment: CertificateLimit
    certificate: CertificateLimit


class EnrollmentData(Model):
    common_name: str
    country_name: str
    given_name: str | None = None
    surname: str | None = None
    serial_number: str | None = None
    unique_identifier: str | None = None
    organization_name: str | None = None
    organization_identifier: str | None = None

    def attributes(self) -> dict[str, str]:
        """The DN attributes present, by their KSeF (camelCase) names, in KSeF's order."""
        data = msgspec.to_builtins(self)
        return {name: str(value) for name, value in data.items() if value is not None}


class EnrollmentStarted(Model):
    reference_number: str
    timestamp: dt.datetime


class EnrollmentStatus(Model):
    request_date: dt.datetime
    status: StatusInfo
    certificate_serial_number: str | None = None


class RetrievedCertificate(Model):
    certificate: str              # DER, Base64
    certificate_name: str
    certificate_serial_number: str
    certificate_type: str

    def x509(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(base64.b64decode(self.certificate))


class SubjectIdentifier(Model):
    type: str
    value: str


class CertificateInfo(Model):
    certificate_serial_number: str
    name: str
    type: str
    common_name: str
    status: str                   # Active | Blocked | Revoked | Expired
    subject_identifier: SubjectIdentifier
    valid_from: dt.datetime
    valid_to: dt.datetime
    request_date: dt.datetime
    last_use_date: dt.datetime | None = None


class _CertificatePage(Model):
    certificates: list[CertificateInfo]
    has_more: bool


class _Retrieved(Model):
    certificates: list[RetrievedCertificate]


class EnrollmentFailed(KsefError):
    """The enrollment ended with status 400, 500 or 550 (PROTOCOL.md §9.3); 500 and 550 may be retried with a new
    enrollment (and a new key: the old one may already be certified)."""

    def __init__(self, message: str, status: StatusInfo, reference_number: str) -> None:
        super().__init__(message)
        self.status = status
        self.reference_number = reference_number
        self.retryable = status.code in (500, 550)


class EnrollmentPending(KsefError):
    retryable = True


@dataclass(frozen=True, repr=False)
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: PrivateKey
    serial_number: str
    certificate_type: str
    name: str

    def __repr__(self) -> str:          # never the key
        return f"IssuedCertificate({self.certificate_type} {self.serial_number}, {self.name!r})"


def new_key(kind: str = "ec") -> PrivateKey:
    """A fresh key: EC P-256 (KSeF recommends it) or RSA 2048; KSeF accepts no other size or curve."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key type must be 'ec' (P-256) or 'rsa' (2048 bits), not {kind!r}")


def subject_name(data: EnrollmentData) -> x509.Name:
    """The DN exactly as KSeF gave it, each attribute in the string type KSeF expects."""
    attributes = []
    for name, value in data.attributes().items():
        oid, kind = DN_ATTRIBUTES[name]
        attributes.append(x509.NameAttribute(oid, value, _type=kind))
    return x509.Name(attributes)


def build_csr(data: EnrollmentData, key: PrivateKey) -> bytes:
    """A PKCS#10 request in DER: RSA PKCS#1 v1.5 or ECDSA (no parameters), SHA-256."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject_name(data)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def public_key_der(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _status_text(status: StatusInfo) -> str:
    details = "; ".join(status.details or [])
    return f"{status.code} {status.description}" + (f" ({details})" if details else "")


@dataclass(frozen=True)
class PollOptions:
    first: float = 0.5
    factor: float = 1.5
    maximum: float = 10.0
    budget: float = 600.0


class CertificateManager:
    """The certificate operations of one authenticated KSeF context."""

    def __init__(self, auth: AuthSession, *, sleep: Sleep = real_sleep, poll_options: PollOptions | None = None
                 ) -> None:
        self.auth = auth
        self.sleep = sleep
        self.poll_options = poll_options or PollOptions()

    async def _call(self, method: str, template: str, **kwargs: Any) -> Response:
        return await self.auth.request(method, template, **kwargs)

    async def limits(self) -> CertificateLimits:
        return (await self._call("GET", "/certificates/limits", expect=(200,))).decode(CertificateLimits)

    async def enrollment_data(self) -> EnrollmentData:
        """The DN for the CSR. 25001 means the login was by KSeF token: enrolling needs a XAdES login."""
        try:
            response = await self._call("GET", "/certificates/enrollments/data", expect=(200,))
        except KsefException as exc:
            if 25001 in exc.codes:
                raise KsefError("KSeF gives certificate data only after a login with a signature or certificate "
                                "(XAdES), not with a KSeF token: configure `certificate` and `private_key` (a "
                                "qualified certificate or seal, or an existing KSeF certificate) for this company "
                                "and try again") from exc
            raise
        return response.decode(EnrollmentData)

    async def submit(self, name: str, certificate_type: CertificateType, csr_der: bytes,
                     valid_from: dt.datetime | None = None) -> EnrollmentStarted:
        """POST /certificates/enrollments. Not replayed: a lost answer may have created an enrollment."""
        body: dict[str, Any] = {"certificateName": name, "certificateType": certificate_type,
                                "csr": base64.b64encode(csr_der).decode("ascii")}
        if valid_from is not None:
            body["validFrom"] = aware(valid_from).astimezone(dt.UTC).isoformat()
        response = await self._call("POST", "/certificates/enrollments", json=body, replay_safe=False, expect=(202,))
        started = response.decode(EnrollmentStarted)
        log.info("ksef.certificate_enrollment_submitted", reference=started.reference_number, type=certificate_type)
        return started

    async def status(self, reference: str) -> EnrollmentStatus:
        response = await self._call("GET", "/certificates/enrollments/{referenceNumber}",
                                    params={"referenceNumber": reference}, expect=(200,))
        return response.decode(EnrollmentStatus)

    async def wait(self, reference: str) -> str:
        """Poll until the enrollment ends; the serial number, or EnrollmentFailed / EnrollmentPending."""
        def pending(value: EnrollmentStatus, waited: float) -> EnrollmentPending:
            return EnrollmentPending(f"certificate enrollment {reference} is still in progress after {waited:.0f} s; "
                                     "it is checked again later")

        options = self.poll_options
        result = await poll(lambda: self.status(reference), lambda s: s.status.code != 100, sleep=self.sleep,
                            first=options.first, factor=options.factor, maximum=options.maximum,
                            budget=options.budget, gave_up=pending)
        if result.status.code == 200 and result.certificate_serial_number:
            return result.certificate_serial_number
        raise EnrollmentFailed(f"KSeF refused the certificate enrollment {reference}: "
                               f"{_status_text(result.status)}", result.status, reference)

    async def retrieve(self, serials: list[str]) -> list[RetrievedCertificate]:
        found: list[RetrievedCertificate] = []
        for start in range(0, len(serials), 10):          # at most 10 per call (RetrieveCertificatesRequest)
            response = await self._call("POST", "/certificates/retrieve",
                                        json={"certificateSerialNumbers": serials[start:start + 10]},
                                        replay_safe=True, expect=(200,))
            found += response.decode(_Retrieved).certificates
        return found

    async def certificate(self, serial: str) -> x509.Certificate:
        found = [c for c in await self.retrieve([serial]) if c.certificate_serial_number == serial]
        if not found:
            raise KsefError(f"KSeF returned no certificate with serial number {serial} for this login")
        return found[0].x509()

    async def query(self, *, serial: str | None = None, name: str | None = None,
                    certificate_type: CertificateType | None = None, status: str | None = None,
                    expires_after: dt.datetime | None = None, page_size: int = 50) -> list[CertificateInfo]:
        """Every matching certificate, newest request first (all pages)."""
        filters: dict[str, Any] = {}
        for key, value in (("certificateSerialNumber", serial), ("name", name), ("type", certificate_type),
                           ("status", status)):
            if value is not None:
                filters[key] = value
        if expires_after is not None:
            filters["expiresAfter"] = aware(expires_after).astimezone(dt.UTC).isoformat()
        found: list[CertificateInfo] = []
        offset = 0
        while True:
            response = await self._call("POST", "/certificates/query", json=filters, replay_safe=True,
                                        query={"pageSize": str(page_size), "pageOffset": str(offset)}, expect=(200,))
            page = response.decode(_CertificatePage)
            found += page.certificates
            if not page.has_more or not page.certificates:
                return found
            offset += 1

    async def revoke(self, serial: str, reason: str = "Unspecified") -> None:
        """POST /certificates/{serial}/revoke (not possible after a KSeF-token login: 403)."""
        await self._call("POST", "/certificates/{certificateSerialNumber}/revoke",
                         params={"certificateSerialNumber": serial}, json={"revocationReason": reason},
                         replay_safe=True, expect=(204,))
        log.info("ksef.certificate_revoked", serial=serial, reason=reason)

    async def shorten_validity(self, serial: str, valid_to: dt.datetime) -> None:
        """PUT /testdata/certificates/{serial}: TEST only, moves validTo earlier (PROTOCOL.md §11)."""
        await self._call("PUT", "/testdata/certificates/{serialNumber}", params={"serialNumber": serial},
                         json={"validTo": aware(valid_to).astimezone(dt.UTC).isoformat()}, replay_safe=True,
                         expect=(200,))

    async def enroll(self, name: str, certificate_type: CertificateType, *, key: PrivateKey | None = None,
                     valid_from: dt.datetime | None = None) -> IssuedCertificate:
        """The whole flow (see the module docstring); `key` defaults to a new EC P-256 key."""
        if certificate_type not in CERTIFICATE_TYPES:
            raise ValueError(f"certificate type must be Authentication or Offline, not {certificate_type!r}")
        limits = await self.limits()
        if not limits.can_request:
            raise KsefError(f"KSeF allows no new certificate now: enrollments left {limits.enrollment.remaining} of "
                            f"{limits.enrollment.limit}, certificates left {limits.certificate.remaining} of "
                            f"{limits.certificate.limit}; revoke certificates you no longer use "
                            "(`ksefd certificate revoke`)")
        data = await self.enrollment_data()
        key = key or new_key("ec")
        started = await self.submit(name, certificate_type, build_csr(data, key), valid_from)
        serial = await self.wait(started.reference_number)
        return await self.collect(serial, key, certificate_type, name)

    async def collect(self, serial: str, key: PrivateKey, certificate_type: str, name: str) -> IssuedCertificate:
        """Retrieve the issued certificate and check it carries our key."""
        certificate = await self.certificate(serial)
        if public_key_der(certificate.public_key()) != public_key_der(key):   # type: ignore[arg-type]
            raise KsefError(f"the certificate {serial} KSeF returned does not carry the key of this enrollment")
        log.info("ksef.certificate_issued", serial=serial, type=certificate_type,
                 valid_to=certificate.not_valid_after_utc.isoformat())
        return IssuedCertificate(certificate, key, serial, certificate_type, name)
