"""The Ministry's two RSA key pairs, published as self-signed X.509 certificates (PROTOCOL.md §2.1).

`KsefTokenEncryption` decrypts `token|timestampMs`; `SymmetricKeyEncryption` unwraps AES keys of
sessions and exports. Both with RSA-OAEP, SHA-256 and MGF1-SHA-256 (PROTOCOL.md §2.2).
Keys live in the store so a simulator restarted with `--state` keeps them; `rotate` replaces a
usage's key (the old `publicKeyId` then gives 21470, as in an emergency rotation).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .clock import Clock, iso
from .errors import KsefException
from .store import Store

USAGES = ("KsefTokenEncryption", "SymmetricKeyEncryption")
TABLE = "mf_keys"


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class KeyRing:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._private: dict[str, rsa.RSAPrivateKey] = {}
        for usage in USAGES:
            if not any(rec["usage"] == usage for rec in store.values(TABLE)):
                self.rotate(usage)

    def rotate(self, usage: str) -> str:
        """Replace the key for `usage`; returns the new publicKeyId."""
        if usage not in USAGES:
            raise ValueError(usage)
        for key, rec in self._store.items(TABLE):
            if rec["usage"] == usage:
                self._store.delete(TABLE, key)
                self._private.pop(key, None)
        now = self._clock.now()
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ministerstwo Finansów"),
                          x509.NameAttribute(NameOID.COUNTRY_NAME, "PL")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(private.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=730))
                .sign(private, hashes.SHA256()))
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        key_id = _b64_sha256(spki)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        self._store.put(TABLE, key_id, {
            "usage": usage,
            "certificate": base64.b64encode(cert_der).decode("ascii"),
            "certificateId": _b64_sha256(cert_der),
            "validFrom": iso(cert.not_valid_before_utc),
            "validTo": iso(cert.not_valid_after_utc),
            "privateKeyPem": pem.decode("ascii"),
        })
        self._private[key_id] = private
        return key_id

    def published(self) -> list[dict[str, object]]:
        """The body of GET /security/public-key-certificates."""
        return [{"certificate": rec["certificate"], "certificateId": rec["certificateId"], "publicKeyId": key,
                 "validFrom": rec["validFrom"], "validTo": rec["validTo"], "usage": [rec["usage"]]}
                for key, rec in self._store.items(TABLE)]

    def _key(self, usage: str, public_key_id: str | None) -> rsa.RSAPrivateKey:
        for key, rec in self._store.items(TABLE):
            if rec["usage"] == usage and (public_key_id is None or public_key_id == key):
                if key not in self._private:
                    loaded = serialization.load_pem_private_key(rec["privateKeyPem"].encode(), None)
                    assert isinstance(loaded, rsa.RSAPrivateKey)
                    self._private[key] = loaded
                return self._private[key]
        # The documented detail (openapi.json); a key of the other usage is as unsupported as an unknown one.
        raise KsefException(21470, [f"Klucz o identyfikatorze {public_key_id} nie jest wspierany."])

    def decrypt(self, usage: str, public_key_id: str | None, ciphertext: bytes) -> bytes:
        """RSA-OAEP(SHA-256, MGF1-SHA-256) decryption; raises ValueError on a bad ciphertext."""
        private = self._key(usage, public_key_id)
        return private.decrypt(ciphertext, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                        algorithm=hashes.SHA256(), label=None))
