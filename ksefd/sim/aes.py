"""AES-256-CBC with PKCS#7 padding and the session IV, no IV prefix (PROTOCOL.md §2.2, §13.1)."""

from __future__ import annotations

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Decrypt one invoice (or batch part); ValueError when the length or the padding is wrong."""
    if not ciphertext or len(ciphertext) % 16:
        raise ValueError(f"ciphertext length {len(ciphertext)} is not a positive multiple of the AES block (16)")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """The inverse (exports encrypt packages with the caller's key and IV)."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()
