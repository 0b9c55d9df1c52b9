"""KOD I and KOD II (issue #4 item 9, PROTOCOL.md §8.5-8.6): links rebuilt from the worked examples,
signatures checked with the certificate's public key using the tests' own crypto, images checked."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import segno
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from lxml import etree

from ksefd.ksef import qr
from tests.conftest import SAMPLES

EXAMPLE_KOD_I = ("https://qr-test.ksef.mf.gov.pl/invoice/1111111111/01-02-2026/"
                 "UtQp9Gpc51y-u3xApZjIjgkpZ01js-J8KflSPW8WzIE")
EXAMPLE_SIGNED = ("qr-test.ksef.mf.gov.pl/certificate/Nip/1111111111/1111111111/01F20A5D352AE590/"
                  "UtQp9Gpc51y-u3xApZjIjgkpZ01js-J8KflSPW8WzIE")
EXAMPLE_HASH_B64 = "UtQp9Gpc51y+u3xApZjIjgkpZ01js+J8KflSPW8WzIE="
EXAMPLE_SERIAL = 0x01F20A5D352AE590


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, offline: bool = True,
                     serial: int = EXAMPLE_SERIAL) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Jan Testowy"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINPL-1111111111")])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(digital_signature=not offline, content_commitment=offline, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now).not_valid_after(now + dt.timedelta(days=730))
            .add_extension(usage, critical=True).sign(key, hashes.SHA256()))


def test_kod_i_rebuilds_the_worked_example_from_the_base64_hash_and_from_raw_bytes() -> None:
    day = dt.date(2026, 2, 1)
    assert qr.invoice_link("test", "1111111111", day, EXAMPLE_HASH_B64) == EXAMPLE_KOD_I
    assert qr.invoice_link("qr-test.ksef.mf.gov.pl", "1111111111", day,
                           base64.b64decode(EXAMPLE_HASH_B64)) == EXAMPLE_KOD_I
    assert qr.invoice_link("prod", "1111111111", day, EXAMPLE_HASH_B64).startswith(
        "https://qr.ksef.mf.gov.pl/invoice/1111111111/01-02-2026/")
    assert qr.invoice_link("demo", "1111111111", dt.date(2026, 12, 9), EXAMPLE_HASH_B64).startswith(
        "https://qr-demo.ksef.mf.gov.pl/invoice/1111111111/09-12-2026/")


def test_kod_i_hash_is_the_sha256_of_the_exact_invoice_bytes() -> None:
    invoice = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
    link = qr.invoice_link("test", "5265877635", dt.date(2026, 2, 15), qr.invoice_hash_of(invoice))
    last = link.rsplit("/", 1)[1]
    assert "=" not in last and "+" not in last and "/" not in last
    assert b64url_decode(last) == hashlib.sha256(invoice).digest()


@pytest.mark.parametrize("bad, message", [
    ({"seller_nip": "111-111-11-11"}, "NIP of 10 digits"),
    ({"seller_nip": "PL1111111111"}, "NIP of 10 digits"),
    ({"invoice_hash": "not base64!"}, "not Base64"),
    ({"invoice_hash": b"\x00" * 20}, "32 bytes"),
    ({"host": "https://evil.example/path"}, "host name"),
])
def test_kod_i_refuses_bad_input_naming_the_field(bad: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"host": "test", "seller_nip": "1111111111", "issue_date": dt.date(2026, 2, 1),
                               "invoice_hash": EXAMPLE_HASH_B64}
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        qr.invoice_link(**args)  # type: ignore[arg-type]


def test_kod_i_label_is_the_ksef_number_or_offline() -> None:
    assert qr.invoice_label(None) == "OFFLINE"
    assert qr.invoice_label("5265877635-20250826-0100001AF629-AF") == "5265877635-20250826-0100001AF629-AF"


def test_kod_ii_signed_text_is_the_worked_example() -> None:
    parts = qr.certificate_link_parts("test", "Nip", "1111111111", "1111111111", "01f20a5d352ae590",
                                      EXAMPLE_HASH_B64)
    assert parts.signed_text() == EXAMPLE_SIGNED


def test_kod_ii_with_rsa_pss_verifies_with_the_certificate_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = make_certificate(key)
    link = qr.certificate_link("test", "Nip", "1111111111", "1111111111", certificate, key, EXAMPLE_HASH_B64)
    prefix = f"https://{EXAMPLE_SIGNED}/"
    assert link.startswith(prefix)                  # serial 01F20A5D352AE590 printed with its leading zero
    signature = b64url_decode(link[len(prefix):])
    assert len(signature) == 256
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, EXAMPLE_SIGNED.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                                  salt_length=32), hashes.SHA256())


def test_kod_ii_with_ecdsa_p256_is_r_concat_s_and_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = make_certificate(key)
    link = qr.certificate_link("test", "Nip", "1111111111", "1111111111", certificate, key,
                               base64.b64decode(EXAMPLE_HASH_B64))
    prefix = f"https://{EXAMPLE_SIGNED}/"
    assert link.startswith(prefix)
    signature = b64url_decode(link[len(prefix):])
    assert len(signature) == 64                     # IEEE P1363, not DER
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), EXAMPLE_SIGNED.encode(), ec.ECDSA(hashes.SHA256()))


def test_kod_ii_refuses_an_authentication_certificate_a_foreign_key_and_weak_keys() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="not of type Offline"):
        qr.certificate_link("test", "Nip", "1111111111", "1111111111", make_certificate(key, offline=False), key,
                            EXAMPLE_HASH_B64)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="does not belong"):
        qr.certificate_link("test", "Nip", "1111111111", "1111111111", make_certificate(key), other,
                            EXAMPLE_HASH_B64)
    with pytest.raises(ValueError, match="P-256"):
        qr.sign_text("x", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="context type"):
        qr.certificate_link_parts("test", "Pesel", "1", "1111111111", "01", EXAMPLE_HASH_B64)


def decode_png(data: bytes) -> list[bytes]:
    """A minimal reader for the 8-bit greyscale, filter-0 PNGs qr_png writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[y * (width + 1):(y + 1) * (width + 1)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return [row[1:] for row in rows]


@pytest.mark.parametrize("label", ["OFFLINE", "CERTYFIKAT", "5265877635-20250826-0100001AF629-AF"])
def test_png_holds_the_segno_symbol_and_the_label_underneath(label: str, tmp_path: Path) -> None:
    png = qr.qr_png(EXAMPLE_KOD_I, label, scale=6)
    rows = decode_png(png)
    matrix = [list(r) for r in segno.make_qr(EXAMPLE_KOD_I, error="m").matrix_iter(scale=1, border=4)]
    size = len(matrix) * 6
    left = (len(rows[0]) - size) // 2
    for y, modules in enumerate(matrix):               # sample every module's centre
        for x, dark in enumerate(modules):
            pixel = rows[y * 6 + 3][left + x * 6 + 3]
            assert pixel == (0 if dark else 255), (x, y)
    label_rows = rows[size:]
    assert any(0 in row for row in label_rows), "the label was not drawn"
    assert all(row == b"\xff" * len(row) for row in label_rows[-12:]), "no white margin under the label"
    if shutil.which("zbarimg"):                         # a real scanner, when the machine has one
        path = tmp_path / "code.png"
        path.write_bytes(png)
        scanned = subprocess.run(["zbarimg", "-q", "--raw", str(path)], capture_output=True, text=True, check=True)
        assert scanned.stdout.strip() == EXAMPLE_KOD_I


def test_png_refuses_a_label_the_font_cannot_draw_and_a_tiny_scale() -> None:
    with pytest.raises(ValueError, match="characters"):
        qr.qr_png(EXAMPLE_KOD_I, "Faktura #1 ż")
    with pytest.raises(ValueError, match="pixels per module"):
        qr.qr_png(EXAMPLE_KOD_I, "OFFLINE", scale=2)


def test_svg_holds_the_symbol_and_the_label_as_text() -> None:
    svg = qr.qr_svg(EXAMPLE_KOD_I, "CERTYFIKAT")
    root = etree.fromstring(svg.encode())
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert [t.text for t in root.findall("s:text", ns)] == ["CERTYFIKAT"]
    assert root.find("s:path", ns) is not None
    width, height = int(root.get("width") or 0), int(root.get("height") or 0)
    assert width == segno.make_qr(EXAMPLE_KOD_I, error="m").symbol_size(scale=5, border=4)[0]
    assert height > width
    assert "&lt;" in qr.qr_svg(EXAMPLE_KOD_I, "<b>")                          # text is escaped
