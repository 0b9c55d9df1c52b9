"""The UPO's XAdES enveloped signature, written from a template instead of by signxml on every UPO (issue #16).

The output is byte for byte what `signxml.xades.XAdESSigner(method=enveloped, rsa-sha256, sha256)` writes for
the same random Ids and signing time (tests/sim/test_upo_signature.py compares the two): the same three
references (the document with the enveloped-signature and C14N 1.1 transforms, the SignedProperties, the
KeyInfo), the same KeyValue and X509Data, SigningCertificateV2 and DataObjectFormat, C14N for every digest
and for SignedInfo, RSA PKCS#1 v1.5 over SHA-256 with the same key. Only the parts that never change for
one key are prepared once: signxml re-derived the KeyInfo, the certificate's digest and the whole tree per
UPO, and serialised and re-parsed the document twice, which cost more than the RSA signature itself.

Canonical forms (C14N, which for a tree without xml:* attributes is what signxml's C14N 1.1 produces):
a referenced element carries every namespace in scope (the UPO's default namespace, ds, xades, sorted),
attributes sorted by name, empty elements as start and end tags. The texts are Ids, digests, a time and
fixed URIs, none with a character C14N would escape.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
C14N11 = "http://www.w3.org/2006/12/xml-c14n11"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SIGNED_PROPERTIES = "http://uri.etsi.org/01903#SignedProperties"
DESCRIPTION = "Default XAdES payload description"      # signxml's XAdESDataObjectFormat defaults
MIME_TYPE = "text/xml"
_METHOD = "\x00digest-method\x00"    # where the DigestMethod goes: empty-element form differs


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sha256(data: bytes) -> str:
    return _b64(hashlib.sha256(data).digest())


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _token() -> str:
    """signxml's Id suffix: 4 random bytes, upper-case hex."""
    return secrets.token_hex(4).upper()


class XadesTemplate:
    """Signs an unsigned UPO root: `sign(root)` -> the signed document's bytes (XML declaration, UTF-8)."""

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        numbers = key.public_key().public_numbers()
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        body = pem.split("-----BEGIN CERTIFICATE-----\n", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
        # KeyInfo's children, the same in both forms (no empty elements, no escapes); Id goes on KeyInfo.
        self._key_info_body = (
            f"<ds:KeyValue><ds:RSAKeyValue><ds:Modulus>{_int_b64(numbers.n)}</ds:Modulus>"
            f"<ds:Exponent>{_int_b64(numbers.e)}</ds:Exponent></ds:RSAKeyValue></ds:KeyValue>"
            f"<ds:X509Data><ds:X509Certificate>{body.replace(chr(13), '')}</ds:X509Certificate></ds:X509Data>")
        self._cert_digest = _sha256(cert.public_bytes(serialization.Encoding.DER))

    def sign(self, root: etree._Element, *, now: dt.datetime | None = None,
             tokens: tuple[str, str, str, str] | None = None) -> bytes:
        """`now` and `tokens` (signature, KeyInfo, SignedProperties, Reference Ids) are for the comparison test."""
        sig, ki, sp, ref = tokens or (_token(), _token(), _token(), _token())
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        sig_id, ki_id, sp_id, ref_id = f"SignXMLSignature{sig}", f"SignXMLCertificate{ki}", \
            f"SignXMLSignature{sig}-SignedProperties{sp}", f"SignXMLReference{ref}"
        # Every namespace in scope at the signature, as C14N writes it on a referenced element's start tag.
        scope = dict(root.nsmap)
        scope.update(ds=DS, xades=XADES)
        ns = "".join(f' xmlns="{uri}"' if prefix is None else f' xmlns:{prefix}="{uri}"'
                     for prefix, uri in sorted(scope.items(), key=lambda item: item[0] or ""))
        document_digest = _sha256(etree.tostring(root, method="c14n"))
        properties_inner = (
            f"<xades:SignedSignatureProperties><xades:SigningTime>{when}</xades:SigningTime>"
            f"<xades:SigningCertificateV2><xades:Cert><xades:CertDigest>{_METHOD}"
            f"<ds:DigestValue>{self._cert_digest}</ds:DigestValue></xades:CertDigest></xades:Cert>"
            "</xades:SigningCertificateV2></xades:SignedSignatureProperties><xades:SignedDataObjectProperties>"
            f'<xades:DataObjectFormat ObjectReference="#{ref_id}"><xades:Description>{DESCRIPTION}'
            f"</xades:Description><xades:MimeType>{MIME_TYPE}</xades:MimeType></xades:DataObjectFormat>"
            "</xades:SignedDataObjectProperties>")
        properties_digest = _sha256(
            (f'<xades:SignedProperties{ns} Id="{sp_id}">'
             + properties_inner.replace(_METHOD, f'<ds:DigestMethod Algorithm="{SHA256}"></ds:DigestMethod>')
             + "</xades:SignedProperties>").encode())
        key_info_digest = _sha256(f'<ds:KeyInfo{ns} Id="{ki_id}">{self._key_info_body}</ds:KeyInfo>'.encode())
        signed_info_c14n = (
            f'<ds:SignedInfo{ns}><ds:CanonicalizationMethod Algorithm="{C14N11}"></ds:CanonicalizationMethod>'
            f'<ds:SignatureMethod Algorithm="{RSA_SHA256}"></ds:SignatureMethod>'
            f'<ds:Reference Id="{ref_id}" URI=""><ds:Transforms>'
            f'<ds:Transform Algorithm="{ENVELOPED}"></ds:Transform><ds:Transform Algorithm="{C14N11}"></ds:Transform>'
            f'</ds:Transforms><ds:DigestMethod Algorithm="{SHA256}"></ds:DigestMethod>'
            f"<ds:DigestValue>{document_digest}</ds:DigestValue></ds:Reference>"
            f'<ds:Reference Type="{SIGNED_PROPERTIES}" URI="#{sp_id}">'
            f'<ds:DigestMethod Algorithm="{SHA256}"></ds:DigestMethod>'
            f"<ds:DigestValue>{properties_digest}</ds:DigestValue></ds:Reference>"
            f'<ds:Reference URI="#{ki_id}"><ds:DigestMethod Algorithm="{SHA256}"></ds:DigestMethod>'
            f"<ds:DigestValue>{key_info_digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>")
        value = _b64(self._key.sign(signed_info_c14n.encode(), padding.PKCS1v15(), hashes.SHA256()))
        signature = (
            f'<ds:Signature xmlns:ds="{DS}" xmlns:xades="{XADES}" Id="{sig_id}"><ds:SignedInfo>'
            f'<ds:CanonicalizationMethod Algorithm="{C14N11}"/><ds:SignatureMethod Algorithm="{RSA_SHA256}"/>'
            f'<ds:Reference URI="" Id="{ref_id}"><ds:Transforms><ds:Transform Algorithm="{ENVELOPED}"/>'
            f'<ds:Transform Algorithm="{C14N11}"/></ds:Transforms><ds:DigestMethod Algorithm="{SHA256}"/>'
            f"<ds:DigestValue>{document_digest}</ds:DigestValue></ds:Reference>"
            f'<ds:Reference URI="#{sp_id}" Type="{SIGNED_PROPERTIES}"><ds:DigestMethod Algorithm="{SHA256}"/>'
            f"<ds:DigestValue>{properties_digest}</ds:DigestValue></ds:Reference>"
            f'<ds:Reference URI="#{ki_id}"><ds:DigestMethod Algorithm="{SHA256}"/>'
            f"<ds:DigestValue>{key_info_digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
            f"<ds:SignatureValue>{value}</ds:SignatureValue>"
            f'<ds:KeyInfo Id="{ki_id}">{self._key_info_body}</ds:KeyInfo>'
            f'<ds:Object><xades:QualifyingProperties Target="#{sig_id}"><xades:SignedProperties Id="{sp_id}">'
            + properties_inner.replace(_METHOD, f'<ds:DigestMethod Algorithm="{SHA256}"/>')
            + "</xades:SignedProperties></xades:QualifyingProperties></ds:Object></ds:Signature>")
        document: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
        end = f"</{etree.QName(root).localname}>".encode("ascii") if root.prefix is None else \
            f"</{root.prefix}:{etree.QName(root).localname}>".encode("ascii")
        if not document.endswith(end):
            raise ValueError("a UPO root with no children cannot carry an enveloped signature here")
        return document[:-len(end)] + signature.encode() + end
