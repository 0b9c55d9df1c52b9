"""Crypto helpers, public key selection and the XAdES shape (PROTOCOL.md §2, §3.3)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree
from signxml.verifier import XMLVerifier

from ksefd.ksef.credentials import CertificateCredentials
from ksefd.ksef.crypto import PublicKey, SymmetricKey, digest, select_key, sha256_b64, sha256_b64url
from ksefd.ksef.errors import ProtocolError
from ksefd.ksef.sessions import check_hash
from ksefd.ksef.transport import Response
from ksefd.ksef.xades import signed_auth_token_request
from tests.support.ksef_auth import self_signed_certificate

DS = "{http://www.w3.org/2000/09/xmldsig#}"
XADES = "{http://uri.etsi.org/01903/v1.3.2#}"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_aes_cbc_is_plain_pkcs7_without_iv_prefix() -> None:
    key = SymmetricKey.generate()
    for size in (0, 1, 15, 16, 6480, 16037):
        plain = bytes(range(256)) * (size // 256) + bytes(size % 256)
        sealed = key.encrypt(plain)
        assert len(sealed) == (size // 16 + 1) * 16                     # 6480 -> 6496, 16037 -> 16048 (§2.2)
        reference = Cipher(algorithms.AES(key.key), modes.CBC(key.iv)).decryptor()
        padded = reference.update(sealed) + reference.finalize()
        assert padded[:size] == plain and key.decrypt(sealed) == plain


def test_streaming_encryption_equals_one_shot() -> None:
    key = SymmetricKey.generate()
    data = bytes(range(256)) * 1000
    stream = key.encryptor()
    chunks = [stream.update(data[i:i + 7777]) for i in range(0, len(data), 7777)] + [stream.finalize()]
    assert b"".join(chunks) == key.encrypt(data)
    with pytest.raises(ProtocolError, match="bad padding"):
        SymmetricKey.generate().decrypt(key.encrypt(data))
    assert "key" not in repr(key).lower().replace("symmetrickey", "")


def test_hash_helpers() -> None:
    data = b"<Faktura/>"
    raw = hashlib.sha256(data).digest()
    assert sha256_b64(data) == base64.b64encode(raw).decode() and len(sha256_b64(data)) == 44
    assert sha256_b64url(data) == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert digest(data).size == len(data)


def _key(usage: str, valid_from: dt.datetime, days: int = 365) -> PublicKey:
    cert, _ = self_signed_certificate(nip="5265877635", valid_from=valid_from, valid_days=days)
    return PublicKey(f"{usage}-{valid_from:%Y%m%d}", (usage,), valid_from, valid_from + dt.timedelta(days=days), cert)


def test_key_selection_by_usage_validity_and_latest_valid_from() -> None:
    old = _key("SymmetricKeyEncryption", NOW - dt.timedelta(days=300))
    new = _key("SymmetricKeyEncryption", NOW - dt.timedelta(days=2))       # planned rotation: both valid now
    future = _key("SymmetricKeyEncryption", NOW + dt.timedelta(days=5))    # not valid yet
    token = _key("KsefTokenEncryption", NOW - dt.timedelta(days=1))
    keys = [old, new, future, token]
    assert select_key(keys, "SymmetricKeyEncryption", NOW) is new
    assert select_key(keys, "KsefTokenEncryption", NOW) is token
    expired = _key("KsefTokenEncryption", NOW - dt.timedelta(days=400), days=10)
    assert select_key([expired], "KsefTokenEncryption", NOW) is None


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_xades_has_the_official_clients_shape_and_verifies(key_type: str) -> None:
    cert, key = self_signed_certificate(nip="5265877635", key_type=key_type)
    signed = signed_auth_token_request("20250604-CR-461EA5B000-537A6BA15D-D7", "Nip", "5265877635",
                                       CertificateCredentials(cert, key), NOW)
    root = etree.fromstring(signed)
    signature = root[-1]
    assert signature.tag == f"{DS}Signature" and signature.get("Id") == "Signature"
    method = signature.find(f"{DS}SignedInfo/{DS}SignatureMethod")
    assert method is not None and method.get("Algorithm", "").endswith("rsa-sha256" if key_type == "rsa"
                                                                         else "ecdsa-sha256")
    refs = signature.findall(f"{DS}SignedInfo/{DS}Reference")
    assert [r.get("URI") for r in refs] == ["", "#SignedProperties"]
    assert refs[1].get("Type") == "http://uri.etsi.org/01903#SignedProperties"
    assert [t.get("Algorithm") for t in refs[0].iter(f"{DS}Transform")] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature", "http://www.w3.org/2001/10/xml-exc-c14n#"]
    assert all(r.find(f"{DS}DigestMethod").get("Algorithm").endswith("sha256") for r in refs)  # type: ignore[union-attr]
    qualifying = signature.find(f"{DS}Object/{XADES}QualifyingProperties")
    assert qualifying is not None and qualifying.get("Target") == "#Signature"
    props = qualifying.find(f"{XADES}SignedProperties")
    assert props is not None and props.get("Id") == "SignedProperties"
    assert props.findtext(f".//{XADES}SigningTime") == "2026-03-01T12:00:00Z"
    cert_digest = props.findtext(f".//{XADES}CertDigest/{DS}DigestValue")
    assert cert_digest == base64.b64encode(cert.fingerprint(hashes.SHA256())).decode()
    assert props.findtext(f".//{XADES}IssuerSerial/{DS}X509SerialNumber") == str(cert.serial_number)
    embedded = signature.findtext(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate")
    assert embedded and x509.load_der_x509_certificate(base64.b64decode(embedded)) == cert
    verified = XMLVerifier().verify(signed, x509_cert=cert, expect_references=2)
    assert isinstance(verified, list)
    names = {etree.QName(v.signed_xml).localname for v in verified if v.signed_xml is not None}
    assert names == {"AuthTokenRequest", "SignedProperties"}


def test_certificate_without_identifiers_uses_fingerprint() -> None:
    cert, key = self_signed_certificate()
    creds = CertificateCredentials(cert, key)
    assert creds.subject_identifier is None and creds.subject_identifier_type == "certificateFingerprint"
    signed = signed_auth_token_request("20250604-CR-461EA5B000-537A6BA15D-D7", "Nip", "5265877635", creds, NOW)
    assert b"<SubjectIdentifierType>certificateFingerprint</SubjectIdentifierType>" in signed


def test_upo_hash_header_is_checked() -> None:
    body = b"<Potwierdzenie/>"
    good = Response(200, {"x-ms-meta-hash": sha256_b64(body)}, body)
    assert check_hash(good, "UPO") == body
    assert check_hash(Response(200, {}, body), "UPO") == body         # no header: nothing to check
    with pytest.raises(ProtocolError, match="does not match its x-ms-meta-hash") as caught:
        check_hash(Response(200, {"x-ms-meta-hash": sha256_b64(b"other")}, body), "UPO")
    assert caught.value.retryable


def test_rsa_oaep_is_sha256_with_mgf1_sha256() -> None:
    """PROTOCOL.md §2.2, §13.2: many libraries default to SHA-1; KSeF decrypts with SHA-256 / MGF1-SHA-256."""
    cert, key = self_signed_certificate(nip="5265877635")
    public = PublicKey("id", ("KsefTokenEncryption",), NOW, NOW + dt.timedelta(days=1), cert)
    sealed = public.encrypt(b"token|1752236636015")
    assert isinstance(key, rsa.RSAPrivateKey)
    sha256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert key.decrypt(sealed, sha256) == b"token|1752236636015"
    with pytest.raises(ValueError):
        key.decrypt(sealed, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
