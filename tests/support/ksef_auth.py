"""Test-side KSeF authentication, written from PROTOCOL.md §3 with our own crypto (cryptography + lxml),
never with the simulator's helpers or the client's code. Other test modules import these helpers to get
access tokens the way a user does: a self-signed certificate, a XAdES-signed AuthTokenRequest, a KSeF
token created with POST /tokens, then token authentication.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from lxml import etree

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
AUTH_NS = "http://ksef.mf.gov.pl/auth/token/2.0"


def self_signed_certificate(*, nip: str | None = None, pesel: str | None = None, seal_nip: str | None = None,
                            key_type: str = "rsa", common_name: str = "Jan Testowy",
                            valid_from: dt.datetime | None = None, valid_days: int = 365,
                            rsa_bits: int = 2048, ec_curve: ec.EllipticCurve | None = None,
                            ) -> tuple[x509.Certificate, PrivateKey]:
    """A TEST-style certificate (PROTOCOL.md §11): person with serialNumber TINPL-/PNOPL-, or a seal with
    organizationIdentifier VATPL-; none of the three gives a certificate identified only by fingerprint."""
    key: PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif key_type == "ec":
        key = ec.generate_private_key(ec_curve or ec.SECP256R1())
    else:
        raise ValueError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if seal_nip is not None:
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Firma {seal_nip} sp. z o.o."),
                       x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"VATPL-{seal_nip}")]
    elif nip is not None or pesel is not None:
        given, _, surname = common_name.partition(" ")
        attributes += [x509.NameAttribute(NameOID.GIVEN_NAME, given or "Jan"),
                       x509.NameAttribute(NameOID.SURNAME, surname or "Testowy"),
                       x509.NameAttribute(NameOID.SERIAL_NUMBER, f"TINPL-{nip}" if nip else f"PNOPL-{pesel}")]
    attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, "PL"))
    name = x509.Name(attributes)
    start = valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=valid_days))
            .sign(key, hashes.SHA256()))
    return cert, key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate in hex, as the Fingerprint identifier (PROTOCOL.md §3.3)."""
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def auth_token_request(challenge: str, *, context_type: str = "Nip", context_value: str,
                       subject_identifier_type: str = "certificateSubject", namespace: str = AUTH_NS) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<AuthTokenRequest xmlns="{namespace}">'
            f"<Challenge>{challenge}</Challenge>"
            f"<ContextIdentifier><{context_type}>{context_value}</{context_type}></ContextIdentifier>"
            f"<SubjectIdentifierType>{subject_identifier_type}</SubjectIdentifierType>"
            f"</AuthTokenRequest>").encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _c14n(element: Any) -> bytes:
    return bytes(etree.tostring(element, method="c14n", exclusive=True, with_comments=False))


def _sub(parent: Any, ns: str, tag: str, text: str | None = None, **attrs: str) -> Any:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
    if text is not None:
        element.text = text
    return element


def _digest_method(parent: Any) -> None:
    _sub(parent, DS, "DigestMethod", Algorithm=SHA256)


def _signed_properties(obj: Any, cert: x509.Certificate) -> Any:
    qualifying = _sub(obj, XADES, "QualifyingProperties", Target="#Signature")
    props = _sub(qualifying, XADES, "SignedProperties", Id="SignedProperties")
    signature_props = _sub(props, XADES, "SignedSignatureProperties")
    _sub(signature_props, XADES, "SigningTime", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    cert_node = _sub(_sub(signature_props, XADES, "SigningCertificate"), XADES, "Cert")
    digest = _sub(cert_node, XADES, "CertDigest")
    _digest_method(digest)
    _sub(digest, DS, "DigestValue", _b64(cert.fingerprint(hashes.SHA256())))
    issuer_serial = _sub(cert_node, XADES, "IssuerSerial")
    _sub(issuer_serial, DS, "X509IssuerName", cert.issuer.rfc4514_string())
    _sub(issuer_serial, DS, "X509SerialNumber", str(cert.serial_number))
    return props


def _raw_signature(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    der = key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")     # XMLDSig ECDSA is r‖s, not DER


def sign_auth_request(xml: bytes, cert: x509.Certificate, key: PrivateKey, *,
                      properties_certificate: x509.Certificate | None = None) -> bytes:
    """Enveloped XAdES-BES as the official clients make it (PROTOCOL.md §3.3, CS SignatureService).
    `properties_certificate` puts another certificate into SigningCertificate (negative tests only)."""
    root = etree.fromstring(xml, etree.XMLParser(remove_blank_text=False))
    document_digest = hashlib.sha256(_c14n(root)).digest()   # enveloped: the document without the Signature
    nsmap = {"ds": DS}
    signature = etree.SubElement(root, f"{{{DS}}}Signature", {"Id": "Signature"}, nsmap=nsmap)
    signed_info = _sub(signature, DS, "SignedInfo")
    _sub(signed_info, DS, "CanonicalizationMethod", Algorithm=EXC_C14N)
    algorithm = RSA_SHA256 if isinstance(key, rsa.RSAPrivateKey) else ECDSA_SHA256
    _sub(signed_info, DS, "SignatureMethod", Algorithm=algorithm)
    doc_ref = _sub(signed_info, DS, "Reference", URI="")
    transforms = _sub(doc_ref, DS, "Transforms")
    _sub(transforms, DS, "Transform", Algorithm=ENVELOPED)
    _sub(transforms, DS, "Transform", Algorithm=EXC_C14N)
    _digest_method(doc_ref)
    _sub(doc_ref, DS, "DigestValue", _b64(document_digest))
    props_ref = _sub(signed_info, DS, "Reference", URI="#SignedProperties", Type=SIGNED_PROPERTIES_TYPE)
    _sub(_sub(props_ref, DS, "Transforms"), DS, "Transform", Algorithm=EXC_C14N)
    _digest_method(props_ref)
    props_digest = _sub(props_ref, DS, "DigestValue")
    signature_value = _sub(signature, DS, "SignatureValue")
    key_info = _sub(signature, DS, "KeyInfo")
    _sub(_sub(key_info, DS, "X509Data"), DS, "X509Certificate",
         _b64(cert.public_bytes(serialization.Encoding.DER)))
    obj = etree.SubElement(signature, f"{{{DS}}}Object", nsmap={"xades": XADES})
    props = _signed_properties(obj, properties_certificate or cert)
    props_digest.text = _b64(hashlib.sha256(_c14n(props)).digest())
    signature_value.text = _b64(_raw_signature(key, _c14n(signed_info)))
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    """The JWT's payload, read without verification (tests look at what the simulator put there)."""
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


@dataclass
class Tokens:
    access_token: str
    refresh_token: str
    reference_number: str
    access_valid_until: str
    refresh_valid_until: str


class AuthFailed(AssertionError):
    """The authentication operation ended with a status code other than 200."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        super().__init__(f"authentication ended with {status}")


async def _json(resp: aiohttp.ClientResponse, expected: int) -> Any:
    body = await resp.json(content_type=None)
    if resp.status != expected:
        raise AssertionError(f"{resp.method} {resp.url} -> {resp.status} (expected {expected}): {body}")
    return body


async def challenge(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with http.post(f"{base_url}/auth/challenge") as resp:
        result: dict[str, Any] = await _json(resp, 200)
        return result


async def wait_for_auth(http: aiohttp.ClientSession, base_url: str, reference: str, auth_token: str,
                        attempts: int = 200) -> dict[str, Any]:
    """Poll GET /auth/{ref} until the status leaves 100; returns the status object."""
    headers = {"Authorization": f"Bearer {auth_token}"}
    for _ in range(attempts):
        async with http.get(f"{base_url}/auth/{reference}", headers=headers) as resp:
            body = await _json(resp, 200)
        if body["status"]["code"] != 100:
            status: dict[str, Any] = body["status"]
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"authentication {reference} still in progress")


async def redeem(http: aiohttp.ClientSession, base_url: str, reference: str, auth_token: str) -> Tokens:
    async with http.post(f"{base_url}/auth/token/redeem", headers={"Authorization": f"Bearer {auth_token}"}) as resp:
        body = await _json(resp, 200)
    return Tokens(access_token=body["accessToken"]["token"], refresh_token=body["refreshToken"]["token"],
                  reference_number=reference, access_valid_until=body["accessToken"]["validUntil"],
                  refresh_valid_until=body["refreshToken"]["validUntil"])


async def _finish(http: aiohttp.ClientSession, base_url: str, init: dict[str, Any]) -> Tokens:
    reference, auth_token = init["referenceNumber"], init["authenticationToken"]["token"]
    status = await wait_for_auth(http, base_url, reference, auth_token)
    if status["code"] != 200:
        raise AuthFailed(status)
    return await redeem(http, base_url, reference, auth_token)


async def submit_xades(http: aiohttp.ClientSession, base_url: str, signed: bytes,
                       verify_chain: bool | None = None) -> dict[str, Any]:
    params = {} if verify_chain is None else {"verifyCertificateChain": "true" if verify_chain else "false"}
    async with http.post(f"{base_url}/auth/xades-signature", data=signed, params=params,
                         headers={"Content-Type": "application/xml"}) as resp:
        result: dict[str, Any] = await _json(resp, 202)
        return result


async def xades_login(http: aiohttp.ClientSession, base_url: str, *, context_nip: str, cert: x509.Certificate,
                      key: PrivateKey, subject_identifier_type: str = "certificateSubject") -> Tokens:
    found = await challenge(http, base_url)
    xml = auth_token_request(found["challenge"], context_value=context_nip,
                             subject_identifier_type=subject_identifier_type)
    init = await submit_xades(http, base_url, sign_auth_request(xml, cert, key))
    return await _finish(http, base_url, init)


async def owner_login(http: aiohttp.ClientSession, base_url: str, nip: str) -> Tokens:
    """XAdES with a self-signed TINPL-<nip> certificate into the Nip context of that NIP (its owner on TEST)."""
    cert, key = self_signed_certificate(nip=nip)
    return await xades_login(http, base_url, context_nip=nip, cert=cert, key=key)


async def create_ksef_token(http: aiohttp.ClientSession, base_url: str, nip: str, permissions: list[str],
                            description: str = "ksefd tests") -> str:
    tokens = await owner_login(http, base_url, nip)
    headers = {"Authorization": f"Bearer {tokens.access_token}"}
    async with http.post(f"{base_url}/tokens", json={"permissions": permissions, "description": description},
                         headers=headers) as resp:
        created = await _json(resp, 202)
    for _ in range(200):
        async with http.get(f"{base_url}/tokens/{created['referenceNumber']}", headers=headers) as resp:
            status = (await _json(resp, 200))["status"]
        if status == "Active":
            token: str = created["token"]
            return token
        if status != "Pending":
            raise AssertionError(f"token {created['referenceNumber']} ended {status}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"token {created['referenceNumber']} never became Active")


async def token_encryption_key(http: aiohttp.ClientSession, base_url: str) -> tuple[rsa.RSAPublicKey, str]:
    """The current KsefTokenEncryption key and its publicKeyId (PROTOCOL.md §2.1 selection rule)."""
    async with http.get(f"{base_url}/security/public-key-certificates") as resp:
        items = await _json(resp, 200)
    usable = sorted((i for i in items if "KsefTokenEncryption" in i["usage"]), key=lambda i: i["validFrom"])
    chosen = usable[-1]
    public = x509.load_der_x509_certificate(base64.b64decode(chosen["certificate"])).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    return public, chosen["publicKeyId"]


def encrypt_token(public: rsa.RSAPublicKey, token: str, timestamp_ms: int) -> str:
    plain = f"{token}|{timestamp_ms}".encode()
    return _b64(public.encrypt(plain, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                   label=None)))


async def start_token_auth(http: aiohttp.ClientSession, base_url: str, *, context_nip: str, token: str,
                           context_type: str = "Nip") -> dict[str, Any]:
    """Challenge + POST /auth/ksef-token; returns the 202 body (referenceNumber, authenticationToken)."""
    found = await challenge(http, base_url)
    public, key_id = await token_encryption_key(http, base_url)
    body = {"challenge": found["challenge"], "contextIdentifier": {"type": context_type, "value": context_nip},
            "encryptedToken": encrypt_token(public, token, found["timestampMs"]), "publicKeyId": key_id}
    async with http.post(f"{base_url}/auth/ksef-token", json=body) as resp:
        result: dict[str, Any] = await _json(resp, 202)
        return result


async def token_login(http: aiohttp.ClientSession, base_url: str, *, context_nip: str, token: str) -> Tokens:
    init = await start_token_auth(http, base_url, context_nip=context_nip, token=token)
    return await _finish(http, base_url, init)


async def access_token(http: aiohttp.ClientSession, base_url: str, nip: str,
                       permissions: list[str] | None = None) -> str:
    """A token-authenticated access token for `nip` holding `permissions` (default InvoiceWrite, InvoiceRead)."""
    wanted = ["InvoiceWrite", "InvoiceRead"] if permissions is None else permissions
    token = await create_ksef_token(http, base_url, nip, wanted)
    return (await token_login(http, base_url, context_nip=nip, token=token)).access_token
