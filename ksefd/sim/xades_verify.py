"""Checks of a XAdES-signed AuthTokenRequest (POST /auth/xades-signature, PROTOCOL.md §3.3).

Order, each with the code real KSeF documents for it (openapi.json 400 table of the operation):
unreadable XML 21001 (21217 for broken character encoding) -> no signature 9102 / more than one 9103 ->
XSD of the unsigned document 21401 -> the signature itself, really verified with signxml's XAdES verifier
against the certificate carried in KeyInfo (both references, SignedProperties included, and the
SigningCertificate digest) 9105 -> a reference covering the whole AuthTokenRequest (enveloped, or
enveloping through ds:Object; a detached signature covers nothing of the body) 9105 -> the certificate:
key size (RSA >= 2048, EC >= 256) and, for certificateSubject, the identity and attributes 21115 (21406 for a
complete certificate without a usable identifier, see `_refuse_unidentified`).
Self-signed certificates are accepted as on TEST; their validity dates are judged by the caller against the
simulator's clock (signxml would use the wall clock).
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.xades.xades import XAdESSignatureConfiguration, XAdESVerifier

from .errors import KsefException

DS = "http://www.w3.org/2000/09/xmldsig#"
NS_20 = "http://ksef.mf.gov.pl/auth/token/2.0"
NS_21 = "http://ksef.mf.gov.pl/auth/token/2.1"
# 2.0 uses the Java client's copy: the published schemat_auth_v2-0.xsd does not compile in lxml.
XSD_FILES = {NS_20: "AuthTokenRequest_v2-0_ksef-client-java.xsd", NS_21: "schemat_auth_v2-1.xsd"}
CONTEXT_TYPES = ("Nip", "InternalId", "NipVatUe", "PeppolId")

# PROTOCOL.md §3.3 "Accepted signatures": RSA PKCS#1 v1.5, RSA-PSS and ECDSA with SHA-1/2/3; never HMAC or DSA.
ACCEPTED_METHODS = frozenset(m for m in SignatureMethod if not m.name.startswith(("HMAC", "DSA")))
ACCEPTED_DIGESTS = frozenset(DigestAlgorithm)

PERSON_ID = re.compile(r"(PNOPL|PESEL).*?(\d{11})")
PERSON_NIP = re.compile(r"(TINPL|NIP).*?(\d{10})")
SEAL_NIP = re.compile(r"(VATPL).*?(\d{10})")


@dataclass(frozen=True)
class SignedAuthRequest:
    namespace: str
    challenge: str
    context_type: str
    context_value: str
    subject_identifier_type: str          # certificateSubject | certificateFingerprint
    allowed_ips: dict[str, list[str]] | None
    certificate: x509.Certificate


@dataclass(frozen=True)
class CertificateIdentity:
    type: str            # Nip | Pesel | Fingerprint
    value: str
    is_seal: bool


class _Verifier(XAdESVerifier):
    def _check_cert_validity(self, cert: Any, cert_source: Any) -> None:
        """Validity is judged against the simulator's clock by the caller, not the wall clock."""


@functools.cache
def _schema(namespace: str) -> etree.XMLSchema:
    document = etree.fromstring(files("ksefd").joinpath(f"data/xsd/auth/{XSD_FILES[namespace]}").read_bytes())
    # The TNipVatUE and TPeppolId patterns are written as anchored regexes (`^…$`). In XSD regex syntax `^` and
    # `$` are literal characters, so libxml2 would refuse the official sample with <NipVatUe> and every
    # PeppolId; [INFER] KSeF's own validator treats them as anchors (its samples pass), and so do we.
    for pattern in document.iter("{http://www.w3.org/2001/XMLSchema}pattern"):
        value = pattern.get("value", "")
        pattern.set("value", value.removeprefix("^").removesuffix("$"))
    return etree.XMLSchema(document)


def _parse(body: bytes) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        message = str(exc)
        if any(word in message.lower() for word in ("encoding", "utf-8", "utf8", "char 0x")):
            raise KsefException(21217, [message]) from exc
        raise KsefException(21001, [message]) from exc
    except ValueError as exc:
        raise KsefException(21001, [str(exc)]) from exc
    if root.getroottree().docinfo.doctype:   # type: ignore[union-attr]
        raise KsefException(21001, ["Dokument nie może zawierać deklaracji DOCTYPE."])
    return root


def _unsigned_request(root: Any) -> Any:
    """The AuthTokenRequest element without its signature (enveloped) or out of ds:Object (enveloping)."""
    if root.tag == f"{{{DS}}}Signature":
        found = [el for el in root.iter() if etree.QName(el).localname == "AuthTokenRequest"]
        if len(found) != 1:
            raise KsefException(9101, ["Dokument jest samym podpisem bez AuthTokenRequest w ds:Object: podpis "
                                       "zewnętrzny (detached) nie jest akceptowany, dozwolone są podpisy otaczane "
                                       "(enveloped) i otaczające (enveloping)."])
        request = etree.fromstring(etree.tostring(found[0]))
    else:
        request = etree.fromstring(etree.tostring(root))
    for signature in list(request.iter(f"{{{DS}}}Signature")):
        parent = signature.getparent()
        if parent is not None:
            parent.remove(signature)
    return request


def _validate_xsd(request: Any) -> None:
    namespace = etree.QName(request).namespace
    if etree.QName(request).localname != "AuthTokenRequest" or namespace not in XSD_FILES:
        raise KsefException(21401, [f"Element główny {request.tag} nie jest AuthTokenRequest w przestrzeni "
                                    f"nazw {NS_20} ani {NS_21}."])
    schema = _schema(namespace)
    if not schema.validate(request):
        errors: list[Any] = list(schema.error_log)   # type: ignore[call-overload]
        raise KsefException(21401, [f"linia {e.line}: {e.message}" for e in errors][:10])


def _certificate(signature: Any) -> x509.Certificate:
    nodes = signature.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    if not nodes:
        raise KsefException(21115, ["Podpis nie zawiera certyfikatu (KeyInfo/X509Data/X509Certificate)."])
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((nodes[0].text or "").split())))
    except ValueError as exc:
        raise KsefException(21115, [f"Nie można odczytać certyfikatu z KeyInfo: {exc}"]) from exc


def _check_key(cert: x509.Certificate) -> None:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KsefException(21115, [f"Klucz RSA ma {key.key_size} bitów; wymagane co najmniej 2048."])
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise KsefException(21115, [f"Klucz EC ma {key.curve.key_size} bitów; wymagane co najmniej 256."])
    else:
        raise KsefException(21115, ["Obsługiwane są wyłącznie klucze RSA i EC."])


def _verify_signature(body: bytes, signature: Any, cert: x509.Certificate) -> list[Any]:
    config = XAdESSignatureConfiguration(expect_references=True, signature_methods=ACCEPTED_METHODS,
                                         digest_algorithms=ACCEPTED_DIGESTS)
    try:
        results: list[Any] = _Verifier().verify(body, x509_cert=cert, expect_config=config)
    except (SignXMLException, etree.DocumentInvalid, ValueError, KeyError) as exc:
        raise KsefException(9105, [f"Weryfikacja podpisu nie powiodła się: {exc}"]) from exc
    return results


def _signed_request(results: list[Any]) -> Any:
    """The AuthTokenRequest as the signature covers it; a signature that does not cover it is detached."""
    for result in results:
        signed = result.signed_xml
        if signed is None:
            continue
        if etree.QName(signed).localname == "AuthTokenRequest":
            return signed
        if signed.tag == f"{{{DS}}}Object":
            inner = [el for el in signed if etree.QName(el).localname == "AuthTokenRequest"]
            if len(inner) == 1:
                return inner[0]
    raise KsefException(9105, ["Podpis nie obejmuje dokumentu AuthTokenRequest (podpis zewnętrzny - detached - "
                               "nie jest akceptowany; dozwolone są podpisy otaczane i otaczające)."])


def _text(request: Any, path: str) -> str:
    ns = etree.QName(request).namespace
    node = request.find("/".join(f"{{{ns}}}{part}" for part in path.split("/")))
    return (node.text or "").strip() if node is not None else ""


def _read(request: Any, cert: x509.Certificate) -> SignedAuthRequest:
    ns = etree.QName(request).namespace
    context = request.find(f"{{{ns}}}ContextIdentifier")
    choice = next(iter(context)) if context is not None and len(context) else None
    if choice is None or etree.QName(choice).localname not in CONTEXT_TYPES:
        raise KsefException(21401, ["Brak identyfikatora kontekstu w ContextIdentifier."])
    allowed: dict[str, list[str]] | None = None
    ips = request.find(f"{{{ns}}}AuthorizationPolicy/{{{ns}}}AllowedIps")
    if ips is not None:
        allowed = {"ip4Addresses": [], "ip4Ranges": [], "ip4Masks": []}
        keys = {"Ip4Address": "ip4Addresses", "Ip4Range": "ip4Ranges", "Ip4Mask": "ip4Masks"}
        for item in ips:
            allowed[keys[etree.QName(item).localname]].append((item.text or "").strip())
    return SignedAuthRequest(namespace=ns, challenge=_text(request, "Challenge"),
                             context_type=etree.QName(choice).localname, context_value=(choice.text or "").strip(),
                             subject_identifier_type=_text(request, "SubjectIdentifierType"),
                             allowed_ips=allowed, certificate=cert)


def verify_auth_request(body: bytes) -> SignedAuthRequest:
    """Everything KSeF checks synchronously; raises KsefException with the documented code."""
    root = _parse(body)
    signatures = list(root.iter(f"{{{DS}}}Signature"))
    if not signatures:
        raise KsefException(9102, ["Dokument AuthTokenRequest musi być podpisany (XAdES)."])
    if len(signatures) > 1:
        raise KsefException(9103, [f"Dokument zawiera {len(signatures)} podpisy; dozwolony jest jeden."])
    _validate_xsd(_unsigned_request(root))
    cert = _certificate(signatures[0])
    _check_key(cert)
    request = _signed_request(_verify_signature(body, signatures[0], cert))
    return _read(request, cert)


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, 64 hex characters (PROTOCOL.md §3.3; compared case-insensitively)."""
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def certificate_identity(cert: x509.Certificate, subject_identifier_type: str) -> CertificateIdentity:
    """Who signed (PROTOCOL.md §3.3): serialNumber PNOPL/PESEL or TINPL/NIP, organizationIdentifier VATPL,
    or the fingerprint. Required subject attributes are checked for certificateSubject -> 21115."""
    subject = cert.subject
    if subject_identifier_type == "certificateFingerprint":
        return CertificateIdentity("Fingerprint", certificate_fingerprint(cert), False)
    serial = _attribute(subject, NameOID.SERIAL_NUMBER) or ""
    org_id = _attribute(subject, NameOID.ORGANIZATION_IDENTIFIER) or ""
    found: CertificateIdentity | None = None
    if (match := PERSON_ID.search(serial)) is not None:
        found = CertificateIdentity("Pesel", match.group(2), False)
    elif (match := PERSON_NIP.search(serial)) is not None:
        found = CertificateIdentity("Nip", match.group(2), False)
    elif (match := SEAL_NIP.search(org_id)) is not None:
        found = CertificateIdentity("Nip", match.group(2), True)
    if found is None:
        _refuse_unidentified(subject)
    _check_attributes(subject, found.is_seal)
    return found


def _refuse_unidentified(subject: x509.Name) -> NoReturn:
    """certificateSubject, but no PNOPL/PESEL, TINPL/NIP or VATPL identifier in the subject. [INFER] from
    ksef-api issue #169: a personal certificate with all the required attributes whose serialNumber holds no
    usable identifier (there "PESEL-" and ten digits) gets 21406 "Konflikt podpisu i typu uwierzytelnienia":
    such a signature can only be used with certificateFingerprint. A certificate that is not even a complete
    personal certificate or seal stays 21115 "Nieprawidłowy certyfikat"."""
    hint = ("Certyfikat nie zawiera identyfikatora podmiotu: serialNumber (PNOPL/PESEL z 11 cyframi, TINPL/NIP z 10 "
            "cyframi) ani organizationIdentifier (VATPL z 10 cyframi). Użyj "
            "SubjectIdentifierType=certificateFingerprint.")
    complete = [_missing_attributes(subject, is_seal) for is_seal in (False, True)]
    raise KsefException(21406 if [] in complete else 21115, [hint])


# Required subject attributes of D:auth/podpis-xades.md (PROTOCOL.md §3.3); a seal must not name a person.
PERSON_ATTRIBUTES = {"givenName": NameOID.GIVEN_NAME, "surname": NameOID.SURNAME, "commonName": NameOID.COMMON_NAME,
                     "countryName": NameOID.COUNTRY_NAME}
SEAL_ATTRIBUTES = {"organizationName": NameOID.ORGANIZATION_NAME, "commonName": NameOID.COMMON_NAME,
                   "countryName": NameOID.COUNTRY_NAME}
SEAL_FORBIDDEN = {"givenName": NameOID.GIVEN_NAME, "surname": NameOID.SURNAME}


def _missing_attributes(subject: x509.Name, is_seal: bool) -> list[str]:
    required = SEAL_ATTRIBUTES if is_seal else PERSON_ATTRIBUTES
    missing = [n for n, oid in required.items() if _attribute(subject, oid) is None]
    if is_seal:
        missing += [f"bez {n}" for n, oid in SEAL_FORBIDDEN.items() if _attribute(subject, oid) is not None]
    return missing


def _check_attributes(subject: x509.Name, is_seal: bool) -> None:
    missing = _missing_attributes(subject, is_seal)
    if missing:
        kind = "pieczęci" if is_seal else "certyfikatu osoby"
        raise KsefException(21115, [f"Podmiot {kind} nie spełnia wymagań ({', '.join(missing)}); wymagane są "
                                    f"{', '.join(SEAL_ATTRIBUTES if is_seal else PERSON_ATTRIBUTES)}"
                                    f"{', bez givenName i surname' if is_seal else ''}."])


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:   # InvalidSignature, or a key type the check does not support
        return False
    return True
