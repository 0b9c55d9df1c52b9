"""KSeF crypto primitives (PROTOCOL.md §2) and the Ministry's public keys.

* `rsa_oaep_sha256`: RSAES-OAEP with SHA-256 and MGF1-SHA-256, empty label (§2.2, §13.2). Encrypts
  `token|timestampMs` with the KsefTokenEncryption key and AES keys with the SymmetricKeyEncryption key.
* `SymmetricKey`: AES-256-CBC with PKCS#7; the IV is sent separately and never prepended (§13.1). One key and
  IV per session; every invoice or part is its own CBC stream starting from that IV. `encryptor()` and
  `decryptor()` stream large parts through in chunks.
* `sha256_b64`, `digest`: SHA-256 in standard Base64 (44 chars) and the size, as invoiceHash/fileHash want them;
  `sha256_b64url` for QR links (no padding).
* `PublicKeys`: fetches GET /security/public-key-certificates, caches it, picks the key for a usage that is
  valid now with the latest validFrom (§2.1), and `with_key` re-fetches and rebuilds the payload on 21470.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .clock import Clock, SystemClock, aware
from .errors import KsefException, ProtocolError
from .models import PublicKeyCertificate
from .transport import Transport

T = TypeVar("T")
TOKEN_ENCRYPTION = "KsefTokenEncryption"
SYMMETRIC_KEY_ENCRYPTION = "SymmetricKeyEncryption"
UNKNOWN_PUBLIC_KEY = 21470


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


def sha256_b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Digest:
    sha256: str       # Base64, 44 chars
    size: int


def digest(data: bytes) -> Digest:
    return Digest(sha256_b64(data), len(data))


def rsa_oaep_sha256(public_key: rsa.RSAPublicKey, plaintext: bytes) -> bytes:
    return public_key.encrypt(plaintext, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()),
                                                           algorithm=hashes.SHA256(), label=None))


class AesCbcStream:
    """Incremental AES-256-CBC with PKCS#7, for parts too big to hold twice in memory."""

    def __init__(self, key: bytes, iv: bytes, encrypt: bool) -> None:
        cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
        self._encrypt = encrypt
        self._cipher = cipher.encryptor() if encrypt else cipher.decryptor()
        self._pad = padding.PKCS7(128).padder() if encrypt else padding.PKCS7(128).unpadder()

    def update(self, data: bytes) -> bytes:
        if self._encrypt:
            return self._cipher.update(self._pad.update(data))
        return self._pad.update(self._cipher.update(data))

    def finalize(self) -> bytes:
        if self._encrypt:
            return self._cipher.update(self._pad.finalize()) + self._cipher.finalize()
        try:
            return self._pad.update(self._cipher.finalize()) + self._pad.finalize()
        except ValueError as exc:
            raise ProtocolError("AES-256-CBC decryption failed: bad padding (wrong key or IV, or corrupt data)"
                                ) from exc


@dataclass(frozen=True, repr=False)
class SymmetricKey:
    key: bytes        # 32 bytes
    iv: bytes         # 16 bytes

    @classmethod
    def generate(cls) -> SymmetricKey:
        return cls(os.urandom(32), os.urandom(16))

    def __repr__(self) -> str:
        return "SymmetricKey(<secret>)"

    def encryptor(self) -> AesCbcStream:
        return AesCbcStream(self.key, self.iv, encrypt=True)

    def decryptor(self) -> AesCbcStream:
        return AesCbcStream(self.key, self.iv, encrypt=False)

    def encrypt(self, data: bytes) -> bytes:
        stream = self.encryptor()
        return stream.update(data) + stream.finalize()

    def decrypt(self, data: bytes) -> bytes:
        stream = self.decryptor()
        return stream.update(data) + stream.finalize()


@dataclass(frozen=True)
class PublicKey:
    public_key_id: str
    usage: tuple[str, ...]
    valid_from: dt.datetime
    valid_to: dt.datetime
    certificate: x509.Certificate

    def encrypt(self, plaintext: bytes) -> bytes:
        key = self.certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            # PROTOCOL.md §2.2: only RSA is documented; the EC path exists only in the client libraries.
            raise ProtocolError(f"KSeF published a {type(key).__name__} key {self.public_key_id} for "
                                f"{'/'.join(self.usage)}; only RSA-OAEP is supported")
        return rsa_oaep_sha256(key, plaintext)

    def encryption_info(self, symmetric: SymmetricKey) -> dict[str, str]:
        """The `encryption` object of session opens and exports (OA EncryptionInfo)."""
        return {"encryptedSymmetricKey": b64(self.encrypt(symmetric.key)),
                "initializationVector": b64(symmetric.iv), "publicKeyId": self.public_key_id}


def _load(item: PublicKeyCertificate) -> PublicKey:
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(item.certificate))
    except ValueError as exc:
        raise ProtocolError(f"public key certificate {item.public_key_id} is not a DER X.509 certificate") from exc
    return PublicKey(item.public_key_id, tuple(item.usage), aware(item.valid_from), aware(item.valid_to), cert)


def select_key(keys: list[PublicKey], usage: str, now: dt.datetime) -> PublicKey | None:
    """Valid now, for `usage`, latest validFrom (PROTOCOL.md §2.1; the C# client does the same)."""
    usable = [k for k in keys if usage in k.usage and k.valid_from <= now < k.valid_to]
    return max(usable, key=lambda k: k.valid_from, default=None)


class PublicKeys:
    """The Ministry's encryption keys, cached; re-fetched when older than `max_age` or after a 21470."""

    def __init__(self, transport: Transport, clock: Clock | None = None,
                 max_age: dt.timedelta = dt.timedelta(hours=6)) -> None:
        self._transport = transport
        self._clock = clock or SystemClock()
        self._max_age = max_age
        self._keys: list[PublicKey] = []
        self._fetched_at: dt.datetime | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> list[PublicKey]:
        async with self._lock:
            return await self._fetch()

    async def _fetch(self) -> list[PublicKey]:
        response = await self._transport.request("GET", "/security/public-key-certificates")
        self._keys = [_load(item) for item in response.decode(list[PublicKeyCertificate])]
        self._fetched_at = self._clock.now()
        return list(self._keys)

    async def get(self, usage: str) -> PublicKey:
        now = self._clock.now()
        stale = self._fetched_at is None or now - self._fetched_at > self._max_age
        chosen = None if stale else select_key(self._keys, usage, now)
        if chosen is None:
            fetched = self._fetched_at
            async with self._lock:
                # Many companies log in at once (issue #16 point 4): the first one fetches; the others waited
                # for it here and take its answer, so the keys are fetched once per KSeF target, not per login.
                if self._fetched_at == fetched:
                    await self._fetch()
            chosen = select_key(self._keys, usage, self._clock.now())
        if chosen is None:
            raise ProtocolError(f"KSeF publishes no {usage} key that is valid now "
                                f"({len(self._keys)} keys in /security/public-key-certificates)")
        return chosen

    async def with_key(self, usage: str, call: Callable[[PublicKey], Awaitable[T]]) -> T:
        """Run `call(key)`; on 400/21470 (key unknown or withdrawn) re-fetch the keys and run it once more with
        the new key, so the payload is encrypted afresh (PROTOCOL.md §2.1)."""
        key = await self.get(usage)
        try:
            return await call(key)
        except KsefException as exc:
            if UNKNOWN_PUBLIC_KEY not in exc.codes:
                raise
        await self.refresh()
        fresh = await self.get(usage)
        return await call(fresh)
