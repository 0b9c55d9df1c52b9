"""The simulator's own certification authority for KSeF certificates (PROTOCOL.md §9.3): one EC P-256 key and a
self-signed CA certificate, kept in the store (so a restarted `ksefd sim --state` keeps issuing the same chain),
and the issuing of Authentication (keyUsage digitalSignature) and Offline (keyUsage nonRepudiation) certificates
from an accepted CSR. Serial numbers are 8 bytes, printed as 16 uppercase hex digits as KSeF does.
"""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .clock import Clock
from .store import Store

CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "KSeF Simulator CA"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ksefd sim"),
                     x509.NameAttribute(NameOID.COUNTRY_NAME, "PL")])


def new_serial() -> int:
    """A positive 64-bit serial whose first byte is non-zero: always exactly 16 hex digits."""
    return secrets.randbelow(0x7F00_0000_0000_0000) + 0x0100_0000_0000_0000


def serial_hex(serial: int) -> str:
    return f"{serial:016X}"


class CertificateAuthority:
    def __init__(self, store: Store, clock: Clock) -> None:
        record = store.get("sim_meta", "certificate_ca")
        if record is None:
            key = ec.generate_private_key(ec.SECP256R1())
            start = clock.now() - dt.timedelta(days=1)
            cert = (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME)
                    .public_key(key.public_key()).serial_number(new_serial())
                    .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365 * 30))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                 key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                 decipher_only=False), critical=True)
                    .sign(key, hashes.SHA256()))
            record = {"key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()).decode("ascii"),
                      "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii")}
            store.put("sim_meta", "certificate_ca", record)
        loaded = serialization.load_pem_private_key(record["key"].encode("ascii"), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._key = loaded
        self.certificate = x509.load_pem_x509_certificate(record["certificate"].encode("ascii"))

    def issue(self, csr: x509.CertificateSigningRequest, certificate_type: str, serial: int,
              valid_from: dt.datetime, valid_to: dt.datetime) -> x509.Certificate:
        """The subject is the CSR's Name as it was encoded (string types kept), the key the CSR's key."""
        offline = certificate_type == "Offline"
        usage = x509.KeyUsage(digital_signature=not offline, content_commitment=offline, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False)
        public = csr.public_key()
        builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.certificate.subject)
                   .public_key(public).serial_number(serial)
                   .not_valid_before(valid_from).not_valid_after(valid_to)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage, critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        return builder.sign(self._key, hashes.SHA256())
