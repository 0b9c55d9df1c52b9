"""The AuthTokenRequest document and its XAdES-BES enveloped signature (PROTOCOL.md §3.3), with signxml.

The signature has the shape the official clients produce (CS SignatureService):

* `ds:Signature Id="Signature"` appended as the last child of the root;
* Reference `URI=""` with the enveloped-signature and exclusive-C14N transforms, SHA-256;
* Reference `URI="#SignedProperties"`, `Type="http://uri.etsi.org/01903#SignedProperties"`, exclusive C14N, SHA-256;
* `KeyInfo/X509Data/X509Certificate`;
* `ds:Object/xades:QualifyingProperties Target="#Signature"` / `SignedProperties Id="SignedProperties"` with
  `SigningTime` and `SigningCertificate/Cert/{CertDigest (SHA-256), IssuerSerial}`;
* rsa-sha256 for RSA keys, ecdsa-sha256 (r‖s) for EC keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from .credentials import CertificateCredentials

AUTH_NS = "http://ksef.mf.gov.pl/auth/token/2.0"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XADES_NS = "http://uri.etsi.org/01903/v1.3.2#"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
CONTEXT_ELEMENTS = {"Nip": "Nip", "InternalId": "InternalId", "NipVatUe": "NipVatUe", "PeppolId": "PeppolId"}


def auth_token_request(challenge: str, context_type: str, context_value: str,
                       subject_identifier_type: str = "certificateSubject",
                       allowed_ips: dict[str, list[str]] | None = None) -> etree._Element:
    """The unsigned AuthTokenRequest (schemas/auth/schemat_auth_v2-0.xsd). `allowed_ips` keys: Ip4Address,
    Ip4Range, Ip4Mask."""
    if context_type not in CONTEXT_ELEMENTS:
        raise ValueError(f"context type {context_type!r}; expected one of {', '.join(CONTEXT_ELEMENTS)}")
    nsmap: Any = {None: AUTH_NS}       # the default namespace, as in the official samples
    root = etree.Element(f"{{{AUTH_NS}}}AuthTokenRequest", nsmap=nsmap)
    etree.SubElement(root, f"{{{AUTH_NS}}}Challenge").text = challenge
    context = etree.SubElement(root, f"{{{AUTH_NS}}}ContextIdentifier")
    etree.SubElement(context, f"{{{AUTH_NS}}}{CONTEXT_ELEMENTS[context_type]}").text = context_value
    etree.SubElement(root, f"{{{AUTH_NS}}}SubjectIdentifierType").text = subject_identifier_type
    if allowed_ips:
        ips = etree.SubElement(etree.SubElement(root, f"{{{AUTH_NS}}}AuthorizationPolicy"), f"{{{AUTH_NS}}}AllowedIps")
        for tag in ("Ip4Address", "Ip4Range", "Ip4Mask"):
            for value in allowed_ips.get(tag, []):
                etree.SubElement(ips, f"{{{AUTH_NS}}}{tag}").text = value
    return root


@functools.cache
def _signer_type() -> Any:
    """The signer class, made at the first certificate login: signxml (with its imports) costs an idle
    daemon that logs in with tokens ~10 MB it never needs (issue #16 point 4)."""
    from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
    from signxml.signer import XMLSigner

    EXC_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0

    class _KsefXadesSigner(XMLSigner):
        """signxml's enveloped signer plus the official clients' XAdES-BES qualifying properties."""

        def __init__(self, credentials: CertificateCredentials, signing_time: dt.datetime) -> None:
            is_rsa = isinstance(credentials.private_key, rsa.RSAPrivateKey)
            algorithm = SignatureMethod.RSA_SHA256 if is_rsa else SignatureMethod.ECDSA_SHA256
            super().__init__(signature_algorithm=algorithm, digest_algorithm=DigestAlgorithm.SHA256,
                             c14n_algorithm=EXC_C14N)
            self.namespaces = {"ds": DS_NS}
            self._credentials = credentials
            self._signing_time = signing_time
            self.signature_annotators.append(self._add_qualifying_properties)

        def _add_qualifying_properties(self, sig_root: Any, signing_settings: Any) -> None:
            sig_root.set("Id", "Signature")
            cert = self._credentials.certificate
            obj = etree.SubElement(sig_root, f"{{{DS_NS}}}Object")
            qualifying = etree.SubElement(obj, f"{{{XADES_NS}}}QualifyingProperties", {"Target": "#Signature"},
                                          nsmap={"xades": XADES_NS})
            props = etree.SubElement(qualifying, f"{{{XADES_NS}}}SignedProperties", {"Id": "SignedProperties"})
            signature_props = etree.SubElement(props, f"{{{XADES_NS}}}SignedSignatureProperties")
            etree.SubElement(signature_props, f"{{{XADES_NS}}}SigningTime").text = (
                self._signing_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            cert_node = etree.SubElement(etree.SubElement(signature_props, f"{{{XADES_NS}}}SigningCertificate"),
                                         f"{{{XADES_NS}}}Cert")
            cert_digest = etree.SubElement(cert_node, f"{{{XADES_NS}}}CertDigest")
            etree.SubElement(cert_digest, f"{{{DS_NS}}}DigestMethod", {"Algorithm": DigestAlgorithm.SHA256.value})
            etree.SubElement(cert_digest, f"{{{DS_NS}}}DigestValue").text = base64.b64encode(
                cert.fingerprint(hashes.SHA256())).decode("ascii")
            issuer_serial = etree.SubElement(cert_node, f"{{{XADES_NS}}}IssuerSerial")
            etree.SubElement(issuer_serial, f"{{{DS_NS}}}X509IssuerName").text = cert.issuer.rfc4514_string()
            etree.SubElement(issuer_serial, f"{{{DS_NS}}}X509SerialNumber").text = str(cert.serial_number)
            self._reference_signed_properties(sig_root, props)

        def _reference_signed_properties(self, sig_root: Any, props: Any) -> None:
            signed_info = sig_root.find(f"{{{DS_NS}}}SignedInfo")
            reference = etree.SubElement(signed_info, f"{{{DS_NS}}}Reference",
                                         {"URI": "#SignedProperties", "Type": SIGNED_PROPERTIES_TYPE})
            transforms = etree.SubElement(reference, f"{{{DS_NS}}}Transforms")
            etree.SubElement(transforms, f"{{{DS_NS}}}Transform", {"Algorithm": EXC_C14N.value})
            etree.SubElement(reference, f"{{{DS_NS}}}DigestMethod", {"Algorithm": DigestAlgorithm.SHA256.value})
            digest = self._get_digest(self._c14n(props, algorithm=EXC_C14N), algorithm=DigestAlgorithm.SHA256)
            etree.SubElement(reference, f"{{{DS_NS}}}DigestValue").text = base64.b64encode(digest).decode("ascii")

    return _KsefXadesSigner


def sign(document: etree._Element, credentials: CertificateCredentials, signing_time: dt.datetime) -> bytes:
    """Sign `document` (enveloped XAdES-BES) and return the UTF-8 XML bytes to POST to /auth/xades-signature."""
    signer = _signer_type()(credentials, signing_time)
    signed = signer.sign(document, key=credentials.private_key,
                         cert=[credentials.certificate, *credentials.chain])
    # signxml keeps PEM line breaks; one Base64 line, as the official client writes it. KeyInfo is not among
    # the signed references, so this does not touch the signature.
    for element in signed.iter(f"{{{DS_NS}}}X509Certificate"):
        element.text = "".join((element.text or "").split())
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="utf-8"))


def signed_auth_token_request(challenge: str, context_type: str, context_value: str,
                              credentials: CertificateCredentials, signing_time: dt.datetime,
                              allowed_ips: dict[str, list[str]] | None = None) -> bytes:
    document = auth_token_request(challenge, context_type, context_value, credentials.subject_identifier_type,
                                  allowed_ips)
    return sign(document, credentials, signing_time)
