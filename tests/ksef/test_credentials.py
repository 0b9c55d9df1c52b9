"""Credentials (issue #4 item 2): token cleaning and validation, certificate + key files, PKCS#12."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import (
    KsefToken,
    clean_token_text,
    load_certificate,
    load_pkcs12,
)
from ksefd.ksef.errors import CredentialsError
from tests.support.ksef_auth import self_signed_certificate

NIP = "5265877635"
GOOD = ("20251010-EC-1DCE3E3000-12ECB5B36E-45|nip-5265877635|"
        "919f704466624ce29cd5ac7b65ded5e7cccc112eee314f2aaa76e02cd16df7b9")


@pytest.mark.parametrize("pasted", [
    GOOD + " ", " " + GOOD + "\n", "\ufeff" + GOOD, GOOD[:30] + "\u200b" + GOOD[30:], GOOD + "\u00a0\r\n",
    GOOD[:10] + "\n" + GOOD[10:], "\t" + GOOD[:50] + "\u2060" + GOOD[50:] + "\u202f",
])
def test_pasted_token_is_cleaned(pasted: str) -> None:
    assert KsefToken.parse(pasted).value == GOOD


@pytest.mark.parametrize(("text", "message"), [
    ("", "it is empty"),
    (" \u200b\n", "it is empty"),
    ("20251010-EC-1DCE3E3000-12ECB5B36E-45|919f704466624ce29cd5ac7b65ded5e7cccc112eee314f2aaa76e02cd16df7b9",
     "the token has 2 parts separated by '|', expected 3"),
    (GOOD + "|x", "the token has 4 parts separated by '|', expected 3"),
    ("919f704466624ce29cd5ac7b65ded5e7cccc112eee314f2aaa76e02cd16df7b9", "the token has 1 part separated by"),
    (GOOD.replace("20251010-EC-1DCE3E3000", "2025-EC-1DCE3E3000"), "the first part '2025-EC-"),
    (GOOD.replace("|nip-5265877635|", "|5265877635|"), "the second part '5265877635' is not a context"),
    (GOOD[:-1], "the third part (the secret) has 63 characters, expected 64"),
    (GOOD[:-1] + "g", "the third part (the secret) contains 'g'"),
    (GOOD.replace("nip", "nıp"), "LATIN SMALL LETTER DOTLESS I (U+0131)"),
])
def test_malformed_token_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        KsefToken.parse(text)
    assert message in str(caught.value)
    assert "919f7044" not in str(caught.value)      # the secret is never echoed


def test_token_repr_hides_the_secret() -> None:
    token = KsefToken.parse(GOOD)
    assert "919f" not in repr(token) and "919f" not in str(token)
    assert token.reference_number == "20251010-EC-1DCE3E3000-12ECB5B36E-45"
    assert token.context_part == "nip-5265877635"


def test_clean_token_text_keeps_visible_characters() -> None:
    assert clean_token_text("a b\u00a0c\u200bd\ufeffe\u00adf") == "abcdef"


def _write_pair(tmp_path: Path, key_type: str, encoding: serialization.Encoding,
                password: bytes | None, key_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8
                ) -> tuple[Path, Path]:
    cert, key = self_signed_certificate(nip=NIP, key_type=key_type)
    crt = tmp_path / f"jan-{key_type}.crt"
    crt.write_bytes(cert.public_bytes(encoding))
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    key_file = tmp_path / f"jan-{key_type}.key"
    key_file.write_bytes(key.private_bytes(encoding, key_format, encryption))
    return crt, key_file


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_encrypted_key_with_right_and_wrong_password(tmp_path: Path, key_type: str,
                                                     encoding: serialization.Encoding) -> None:
    crt, key_file = _write_pair(tmp_path, key_type, encoding, b"Tajne-Haslo-1")
    loaded = load_certificate(crt, key_file, "Tajne-Haslo-1")
    assert loaded.subject_identifier == ("Nip", NIP)
    assert loaded.subject_identifier_type == "certificateSubject"
    with pytest.raises(CredentialsError) as wrong:
        load_certificate(crt, key_file, "zle-haslo")
    assert "wrong password" in str(wrong.value) and str(key_file) in str(wrong.value)
    assert "zle-haslo" not in str(wrong.value)
    with pytest.raises(CredentialsError) as missing:
        load_certificate(crt, key_file, None)
    assert "is encrypted; give its password" in str(missing.value) and str(key_file) in str(missing.value)


def test_password_file_with_trailing_newline_works(tmp_path: Path) -> None:
    crt, key_file = _write_pair(tmp_path, "rsa", serialization.Encoding.PEM, b"haslo")
    assert load_certificate(crt, key_file, b"haslo\n").subject_identifier == ("Nip", NIP)


def test_traditional_openssl_key_and_combined_pem(tmp_path: Path) -> None:
    crt, key_file = _write_pair(tmp_path, "rsa", serialization.Encoding.PEM, b"haslo",
                                serialization.PrivateFormat.TraditionalOpenSSL)
    assert load_certificate(crt, key_file, "haslo").subject_identifier == ("Nip", NIP)
    both = tmp_path / "both.pem"
    both.write_bytes(crt.read_bytes() + key_file.read_bytes())
    assert load_certificate(both, None, "haslo").subject_identifier == ("Nip", NIP)


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    crt, _ = _write_pair(tmp_path / "a", "rsa", serialization.Encoding.PEM, None)
    _, other_key = _write_pair(tmp_path / "b", "rsa", serialization.Encoding.PEM, None)
    with pytest.raises(CredentialsError, match="does not belong to the certificate"):
        load_certificate(crt, other_key)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"cannot read the certificate file .*missing\.crt"):
        load_certificate(tmp_path / "missing.crt", tmp_path / "missing.key")
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(CredentialsError, match=r"junk\.crt: it is not a PEM or DER X\.509"):
        load_certificate(junk, junk)


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_pkcs12_with_right_and_wrong_password(tmp_path: Path, key_type: str) -> None:
    cert, key = self_signed_certificate(nip=NIP, key_type=key_type)
    p12 = tmp_path / "jan.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(b"jan", key, cert, None,
                                                          serialization.BestAvailableEncryption(b"p12-haslo")))
    assert load_pkcs12(p12, "p12-haslo").certificate == cert
    with pytest.raises(CredentialsError) as wrong:
        load_pkcs12(p12, "inne")
    assert "wrong password" in str(wrong.value) and str(p12) in str(wrong.value)


async def test_files_from_every_format_authenticate(sim: Any, tmp_path: Path) -> None:
    """PEM, DER and PKCS#12, RSA and EC, each logs in to the simulator (XAdES, PROTOCOL.md §3.3)."""
    credentials = []
    for key_type in ("rsa", "ec"):
        for label, encoding in (("pem", serialization.Encoding.PEM), ("der", serialization.Encoding.DER)):
            folder = tmp_path / f"{key_type}-{label}"
            folder.mkdir()
            crt, key_file = _write_pair(folder, key_type, encoding, b"haslo")
            credentials.append(load_certificate(crt, key_file, "haslo"))
        cert, key = self_signed_certificate(nip=NIP, key_type=key_type)
        p12 = tmp_path / f"{key_type}.p12"
        p12.write_bytes(pkcs12.serialize_key_and_certificates(
            b"jan", key, cert, None, serialization.BestAvailableEncryption(b"haslo")))
        credentials.append(load_pkcs12(p12, "haslo"))
    async with KsefClient("test", base_url=sim.base_url,
                          auth_options=AuthOptions(poll_first=0.01, poll_max=0.05)) as client:
        for creds in credentials:
            await client.context(ContextIdentifier.nip(NIP), creds).authenticate()


@pytest.mark.parametrize("pasted", [
    "919f704466624ce29cd5ac7b65ded5e7cccc112eee314f2aaa76e02cd16df7b9|nip-5265877635|20251010-EC-1DCE3E3000-12ECB5B36E-45",
    "20251010-EC-1DCE3E3000-12ECB5B36E-45|919f704466624ce29cd5ac7b65ded5e7cccc112eee314f2aaa76e02cd16df7b9|nip-526",
    "x919f704466624ce29cd5ac7b65de|nip-5265877635|d5e7cccc112eee314f2aaa76e02cd16df7b9" + "0" * 28,
])
def test_parts_in_the_wrong_place_are_described_without_echoing_the_secret(pasted: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        KsefToken.parse(pasted)
    assert "hex digits" in str(caught.value)
    assert "919f7044" not in str(caught.value) and "d5e7cccc" not in str(caught.value)
