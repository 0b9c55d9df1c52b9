"""The client's KSeF certificate lifecycle against the simulator (PROTOCOL.md §9.3, §15, §8.6): enroll
Authentication and Offline certificates with EC and RSA keys, log in with the new Authentication certificate,
sign KOD II with the new Offline certificate and verify the signature, the CSR pitfalls refused with their codes,
the encrypted key file, revocation."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.name import _ASN1Type

from ksefd.ksef import key_files, qr
from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.certificates import (
    CertificateManager,
    EnrollmentFailed,
    build_csr,
    new_key,
)
from ksefd.ksef.client import KsefClient, KsefContext
from ksefd.ksef.credentials import CertificateCredentials, KsefToken, load_certificate
from ksefd.ksef.errors import AuthenticationFailed, CredentialsError, Forbidden, KsefError, KsefException
from ksefd.sim.config import SimConfig
from tests.support import csr as csrs
from tests.support.der_check import subject_string_types
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate

NIP = "5265877635"


@pytest.fixture
async def csim(sim_factory: Any) -> Any:
    return await sim_factory(config=SimConfig(limits_profile="off"))


@pytest.fixture
def xades_context(csim: Any, ksef_clients: Callable[..., KsefClient]) -> Callable[..., KsefContext]:
    """A context logged in with a self-signed TEST certificate (a qualified one stands in for it)."""
    def make(**cert_args: Any) -> KsefContext:
        cert, key = self_signed_certificate(**({"nip": NIP} | cert_args))
        return ksef_clients(csim.base_url).context(ContextIdentifier.nip(NIP), CertificateCredentials(cert, key))
    return make


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
async def test_enroll_authentication_certificate_and_log_in_with_it(
        csim: Any, xades_context: Callable[..., KsefContext], ksef_clients: Callable[..., KsefClient],
        key_kind: str) -> None:
    manager = xades_context().certificates()
    issued = await manager.enroll("ksefd uwierzytelnianie", "Authentication", key=new_key(key_kind))
    assert isinstance(issued.private_key, ec.EllipticCurvePrivateKey if key_kind == "ec" else rsa.RSAPrivateKey)
    assert issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    fresh = ksef_clients(csim.base_url).context(ContextIdentifier.nip(NIP),
                                                CertificateCredentials(issued.certificate, issued.private_key))
    await fresh.authenticate()
    listed = await fresh.certificates().query(serial=issued.serial_number)
    assert [(c.status, c.type) for c in listed] == [("Active", "Authentication")]
    assert listed[0].last_use_date is not None


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
async def test_offline_certificate_signs_kod_ii(xades_context: Callable[..., KsefContext], key_kind: str) -> None:
    issued = await xades_context().certificates().enroll("ksefd offline", "Offline", key=new_key(key_kind))
    invoice_hash = qr.invoice_hash_of(b"<Faktura/>")
    link = qr.certificate_link("test", "Nip", NIP, NIP, issued.certificate, issued.private_key, invoice_hash)
    signed_text, signature_b64 = link.removeprefix("https://").rsplit("/", 1)
    assert f"/{issued.serial_number}/" in signed_text
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    public = issued.certificate.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):       # P1363 r||s -> DER for cryptography's verifier
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public.verify(der, signed_text.encode(), ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            public.verify(der, (signed_text + "x").encode(), ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, signed_text.encode(),
                      padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    # An Authentication certificate must never sign KOD II (PROTOCOL.md §8.6).
    auth = await xades_context().certificates().enroll("ksefd uwierzytelnianie", "Authentication")
    with pytest.raises(ValueError, match="Offline"):
        qr.certificate_link("test", "Nip", NIP, NIP, auth.certificate, auth.private_key, invoice_hash)


async def test_csr_uses_the_string_types_ksef_expects(xades_context: Callable[..., KsefContext]) -> None:
    seal = xades_context(nip=None, seal_nip=NIP).certificates()
    person = xades_context().certificates()
    for manager in (seal, person):
        der = build_csr(await manager.enrollment_data(), new_key())
        types = subject_string_types(der)
        assert types.pop("2.5.4.6") == "PrintableString"
        if "2.5.4.5" in types:
            assert types.pop("2.5.4.5") == "PrintableString"
        assert set(types.values()) == {"UTF8String"}
        assert "2.5.4.97" in types or "2.5.4.42" in types


PITFALLS: dict[str, tuple[int, dict[str, Any]]] = {
    "commonName PrintableString": (25004, {"types": {"commonName": _ASN1Type.PrintableString}}),
    "countryName UTF8String": (25004, {"types": {"countryName": _ASN1Type.UTF8String}}),
    "serialNumber UTF8String": (25004, {"types": {"serialNumber": _ASN1Type.UTF8String}}),
    "ECDSA with NULL parameters": (25004, {"null_parameters": True}),
    "without givenName": (25003, {"drop": ("givenName",)}),
    "without surname": (25003, {"drop": ("surname",)}),
    "RSA 4096": (25010, {"key": "rsa4096"}),
    "EC P-384": (25010, {"key": "p384"}),
    "SHA-224": (25011, {"algorithm": hashes.SHA224()}),
}


@pytest.mark.parametrize("pitfall", list(PITFALLS))
async def test_each_csr_pitfall_is_refused_with_its_code(xades_context: Callable[..., KsefContext],
                                                         pitfall: str) -> None:
    code, options = PITFALLS[pitfall]
    options = dict(options)
    manager = xades_context().certificates()
    data = (await manager.enrollment_data()).attributes()
    null_parameters = options.pop("null_parameters", False)
    der = csrs.csr_der(data, csrs.new_key(options.pop("key", "ec")), **options)
    if null_parameters:
        der = csrs.with_null_signature_parameters(der)
    with pytest.raises(KsefException) as refused:
        await manager.submit("ksefd pułapka", "Authentication", der)
    assert refused.value.codes == [code]


async def test_organization_identifier_printable_string_is_refused(xades_context: Callable[..., KsefContext]) -> None:
    manager = xades_context(nip=None, seal_nip=NIP).certificates()
    der = csrs.csr_der((await manager.enrollment_data()).attributes(), csrs.new_key(),
                       types={"organizationIdentifier": _ASN1Type.PrintableString})
    with pytest.raises(KsefException) as refused:
        await manager.submit("ksefd pułapka", "Authentication", der)
    assert refused.value.codes == [25004]


async def test_reused_key_ends_in_enrollment_failed(xades_context: Callable[..., KsefContext]) -> None:
    manager = xades_context().certificates()
    issued = await manager.enroll("ksefd pierwszy", "Authentication")
    with pytest.raises(EnrollmentFailed) as failed:
        await manager.enroll("ksefd drugi", "Authentication", key=issued.private_key)
    assert failed.value.status.code == 400 and not failed.value.retryable
    assert "certyfikowany" in failed.value.message


async def test_forced_550_is_retryable(csim: Any, http: aiohttp.ClientSession,
                                       xades_context: Callable[..., KsefContext]) -> None:
    async with http.post(f"{csim.root_url}/sim/certificates/outcomes", json={"next": [550]}):
        pass
    with pytest.raises(EnrollmentFailed) as failed:
        await xades_context().certificates().enroll("ksefd anulowany", "Offline")
    assert failed.value.retryable and failed.value.status.code == 550


async def test_token_login_cannot_enroll_or_revoke(csim: Any, http: aiohttp.ClientSession,
                                                   ksef_clients: Callable[..., KsefClient]) -> None:
    token = await create_ksef_token(http, csim.base_url, NIP, ["CredentialsManage"])
    manager = ksef_clients(csim.base_url).context(ContextIdentifier.nip(NIP), KsefToken.parse(token)).certificates()
    with pytest.raises(KsefError, match="XAdES"):
        await manager.enroll("ksefd token", "Authentication")
    with pytest.raises(Forbidden):
        await manager.revoke("0123456789ABCDEF")


async def test_revoked_certificate_cannot_log_in(csim: Any, xades_context: Callable[..., KsefContext],
                                                 ksef_clients: Callable[..., KsefClient]) -> None:
    manager = xades_context().certificates()
    issued = await manager.enroll("ksefd do odwołania", "Authentication")
    await manager.revoke(issued.serial_number, "Superseded")
    assert [c.status for c in await manager.query(serial=issued.serial_number)] == ["Revoked"]
    fresh = ksef_clients(csim.base_url).context(ContextIdentifier.nip(NIP),
                                                CertificateCredentials(issued.certificate, issued.private_key))
    with pytest.raises(AuthenticationFailed) as failed:
        await fresh.authenticate()
    assert failed.value.code == 460 and "is revoked" in failed.value.message


async def test_key_file_is_encrypted_0600_and_loads_back(tmp_path: Path, xades_context: Callable[..., KsefContext],
                                                         debug_logs: list[Any]) -> None:
    issued = await xades_context().certificates().enroll("ksefd plik", "Authentication")
    password = key_files.ensure_password_file(tmp_path / "jan.pass")
    key_files.write_key(tmp_path / "jan.key", issued.private_key, password)
    key_files.write_certificate(tmp_path / "jan.crt", issued.certificate)
    for name in ("jan.pass", "jan.key", "jan.crt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    pem = (tmp_path / "jan.key").read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    with pytest.raises(CredentialsError):
        load_certificate(tmp_path / "jan.crt", tmp_path / "jan.key", b"wrong")
    loaded = load_certificate(tmp_path / "jan.crt", tmp_path / "jan.key", password)
    assert loaded.certificate == issued.certificate
    assert key_files.ensure_password_file(tmp_path / "jan.pass") == password    # not replaced
    raw = issued.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    text = repr(debug_logs) + repr(issued)
    assert password.decode() not in text and base64.b64encode(raw)[:40].decode() not in text
    assert "PRIVATE KEY" not in text


async def test_query_pages_through_everything(csim: Any, xades_context: Callable[..., KsefContext]) -> None:
    manager: CertificateManager = xades_context().certificates()
    for index in range(12):
        data = await manager.enrollment_data()
        started = await manager.submit(f"ksefd seria {index:02d}", "Offline", build_csr(data, new_key()))
        await manager.wait(started.reference_number)
    found = await manager.query(page_size=10, certificate_type="Offline")
    assert len(found) == 12 and len({c.certificate_serial_number for c in found}) == 12
    assert [c.name for c in await manager.query(name="seria 07")] == ["ksefd seria 07"]
