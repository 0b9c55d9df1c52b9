"""check_invoice against every official sample and a mutated copy for every rejection code."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest

from ksefd.invoice import Code, InvoiceRejected, check_invoice
from tests.conftest import SAMPLES

pytestmark = pytest.mark.usefixtures("english")   # the checker's messages as their ids

INVOICES = sorted((SAMPLES / "invoices").glob("*.xml"))
SELLER = "9999999999"
TODAY = dt.date(2026, 11, 22)
PLAIN = SAMPLES / "invoices" / "FA_3_Przyklad_1.xml"
WITH_ATTACHMENT = SAMPLES / "invoices" / "FA_3_Przyklad_24.xml"


def check(data: bytes, *, nip: str = SELLER, today: dt.date = TODAY, **kwargs: int) -> object:
    return check_invoice(data, file_name="FV.xml", company_nip=nip, today=today, **kwargs)


def rejected(data: bytes, code: Code, **kwargs: object) -> InvoiceRejected:
    with pytest.raises(InvoiceRejected) as caught:
        check_invoice(data, file_name="FV.xml", company_nip=str(kwargs.get("nip", SELLER)),
                      today=kwargs.get("today", TODAY))  # type: ignore[arg-type]
    assert caught.value.code == code, caught.value.to_dict()
    assert caught.value.hint
    return caught.value


def sample() -> bytes:
    return PLAIN.read_bytes()


def line_of(data: bytes, needle: bytes) -> int:
    return data[:data.index(needle)].count(b"\n") + 1


P1_LINE = line_of(PLAIN.read_bytes(), b"<P_1>")


def test_there_are_official_samples() -> None:
    assert len(INVOICES) >= 10


@pytest.mark.parametrize("path", INVOICES, ids=lambda p: p.name)
def test_every_official_sample_passes_with_its_exact_bytes(path: Path) -> None:
    data = path.read_bytes()
    checked = check_invoice(data, file_name=path.name, company_nip=SELLER, today=TODAY)
    assert checked.data is data
    assert checked.size == len(data)
    assert checked.seller_nip == SELLER
    assert len(checked.sha256) == 32 and len(checked.sha256_b64) == 44
    assert checked.file_name == path.name
    json.dumps(checked.facts())


def test_facts_of_a_plain_sample() -> None:
    import base64
    import hashlib
    from decimal import Decimal

    data = sample()
    checked = check_invoice(data, file_name="a.xml", company_nip=SELLER, today=TODAY)
    assert checked.sha256 == hashlib.sha256(data).digest()
    assert checked.sha256_b64 == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert checked.sha256_b64url == base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    assert checked.issue_date == dt.date(2026, 2, 15)
    assert checked.duplicate_key == (SELLER, "VAT", "FV2026/02/150")
    assert checked.gross_total == Decimal("2051")
    assert checked.currency == "PLN"
    assert checked.buyer.id_type == "Nip" and checked.buyer.value == "1111111111"
    assert checked.has_attachment is False


def test_facts_of_foreign_buyer_and_attachment() -> None:
    eu = check(SAMPLES.joinpath("invoices", "FA_3_Przyklad_22.xml").read_bytes())
    assert eu.buyer.id_type == "VatUe" and eu.buyer.value == "DE999999999"  # type: ignore[attr-defined]
    assert eu.currency == "EUR"  # type: ignore[attr-defined]
    assert check(WITH_ATTACHMENT.read_bytes()).has_attachment is True  # type: ignore[attr-defined]


# --- byte and character level -------------------------------------------------------------------

def test_bom() -> None:
    error = rejected(b"\xef\xbb\xbf" + sample(), Code.BOM)
    assert error.to_dict()["stage"] == "local-check"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_is_named(codec: str) -> None:
    error = rejected(sample().decode().encode(codec), Code.ENCODING_UTF16)
    assert "UTF-16" in error.message and "UTF-8 without BOM" in error.message


def test_utf32_is_not_utf8() -> None:
    error = rejected(sample().decode().encode("utf-32"), Code.NOT_UTF8)
    assert "UTF-32" in error.message


def test_windows_1250_detected_from_polish_bytes() -> None:
    data = sample().decode().encode("cp1250")   # declaration still says UTF-8: the ERP lied
    error = rejected(data, Code.ENCODING_WINDOWS_1250)
    assert "windows-1250" in error.message and "re-export from the ERP as UTF-8 without BOM" in error.message
    assert error.details["line"] > 1 and error.details["column"] >= 1 and error.details["byte"].startswith("0x")


def test_windows_1250_named_when_cp1250_only_letters_appear() -> None:
    text = sample().decode().replace("ul. Kwiatowa 1 m. 2", "ul. Świętokrzyska 1 m. 2")
    error = rejected(text.encode("cp1250"), Code.ENCODING_WINDOWS_1250)
    assert error.details["encoding"] == "windows-1250"


def test_iso_8859_2_named() -> None:
    text = sample().decode().replace("ul. Kwiatowa 1 m. 2", "ul. Świętokrzyska 1 m. 2")
    error = rejected(text.encode("iso-8859-2"), Code.ENCODING_ISO_8859_2)
    assert error.details["encoding"] == "ISO-8859-2"
    assert "ISO-8859-2" in error.message and "Świętokrzyska" in error.details["excerpt"]


def test_iso_8859_2_declaration_has_its_own_code() -> None:
    error = rejected(sample().replace(b'encoding="UTF-8"', b'encoding="ISO-8859-2"'), Code.ENCODING_ISO_8859_2)
    assert error.details["declared"] == "ISO-8859-2"


def test_windows_1250_declaration_even_with_ascii_bytes() -> None:
    data = sample().replace(b'encoding="UTF-8"', b'encoding="windows-1250"')
    data = data.decode().encode("ascii", "replace")
    error = rejected(data, Code.ENCODING_WINDOWS_1250)
    assert error.details["declared"] == "windows-1250"


def test_other_declared_encoding() -> None:
    error = rejected(sample().replace(b'encoding="UTF-8"', b"encoding='ISO-8859-1'"), Code.ENCODING_DECLARATION)
    assert "ISO-8859-1" in error.message


def test_utf8_declared_in_lower_case_is_fine() -> None:
    check(sample().replace(b'encoding="UTF-8"', b'encoding="utf-8"'))


def test_no_declaration_is_fine() -> None:
    data = sample()
    check(data[data.index(b"?>") + 2:].lstrip())


def test_invalid_utf8_without_polish_text() -> None:
    data = sample().replace(b"SamploFaktur", b"Sample\xc3\x28Faktur")
    error = rejected(data, Code.NOT_UTF8)
    assert error.details["byte"] == "0xC3"
    assert error.details["line"] == 8


@pytest.mark.parametrize("pi", [b'<?xml-stylesheet type="text/xsl" href="fa.xsl"?>', b"<?erp export=1?>"])
def test_processing_instruction(pi: bytes) -> None:
    first, rest = sample().split(b"\n", 1)
    error = rejected(first + b"\n" + pi + b"\r\n" + rest, Code.PROCESSING_INSTRUCTION)
    assert error.details["line"] == 2 and error.details["column"] == 1


def test_processing_instruction_at_the_very_start() -> None:
    data = sample()
    data = b'<?xml-stylesheet href="a.xsl"?>' + data[data.index(b"?>") + 2:]
    assert rejected(data, Code.PROCESSING_INSTRUCTION).details["line"] == 1


def test_pi_like_text_inside_a_comment_is_fine() -> None:
    check(sample().replace(b"<Naglowek>", b"<!-- see <?not a pi?> --><Naglowek>", 1))


def test_control_character_with_line_and_column() -> None:
    data = sample().replace(b"<SystemInfo>Samplo", b"<SystemInfo>Sam\x01plo")
    error = rejected(data, Code.XML_CHAR)
    assert error.details == {"line": 8, "column": 18, "character": "U+0001"}


@pytest.mark.parametrize("char", ["\u0096", "\u007f", "\ufdd0", "\U0001fffe", "\U0010ffff"])
def test_discouraged_characters(char: str) -> None:
    data = sample().replace(b"Samplo", ("Sam" + char + "plo").encode())
    error = rejected(data, Code.DISCOURAGED_CHAR)
    assert error.details["line"] == 8
    assert error.details["character"] == f"U+{ord(char):04X}"


def test_nel_is_allowed() -> None:
    check(sample().replace(b"Samplo", "Sam\u0085plo".encode()))


def test_discouraged_character_by_reference() -> None:
    error = rejected(sample().replace(b"Samplo", b"Sam&#x96;plo"), Code.DISCOURAGED_CHAR)
    assert error.details["line"] == 8


@pytest.mark.parametrize("declaration", [b'<?xml version="1.1" encoding="UTF-8"?>', b"<?xml version='1.1'?>",
                                         b'<?xml version = "1.1" encoding="utf-8" standalone="yes"?>'])
def test_xml_1_1_declaration_is_refused(declaration: bytes) -> None:
    data = declaration + sample().split(b"?>", 1)[1]
    error = rejected(data, Code.XML_VERSION)
    assert error.details == {"line": 1, "declared": "1.1"}
    assert "XML 1.0" in error.message and 'version="1.1"' in error.message
    assert 'version="1.0"' in error.hint


def test_xml_1_0_declaration_and_none_are_fine() -> None:
    check(sample())
    check(sample().split(b"?>", 1)[1].lstrip())


def test_control_character_by_reference_is_not_well_formed() -> None:
    rejected(sample().replace(b"Samplo", b"Sam&#x1;plo"), Code.NOT_WELL_FORMED)


# --- size, XML, schema ---------------------------------------------------------------------------

def _padded(data: bytes, size: int) -> bytes:
    head, tail = data.split(b"<Naglowek>", 1)
    filler = b"<!--" + b"x" * (size - len(data) - 7) + b"-->"
    return head + filler + b"<Naglowek>" + tail


def test_too_large() -> None:
    data = _padded(sample(), 1_000_001)
    assert len(data) == 1_000_001
    error = rejected(data, Code.TOO_LARGE)
    assert error.details == {"size": 1_000_001, "limit": 1_000_000}


def test_exactly_the_limit_passes() -> None:
    check(_padded(sample(), 1_000_000))


def test_attachment_allows_three_megabytes() -> None:
    check(_padded(WITH_ATTACHMENT.read_bytes(), 2_500_000))
    error = rejected(_padded(WITH_ATTACHMENT.read_bytes(), 3_000_001), Code.TOO_LARGE)
    assert error.details["limit"] == 3_000_000


def test_custom_limit() -> None:
    with pytest.raises(InvoiceRejected) as caught:
        check(sample(), max_size=1000)
    assert caught.value.code == Code.TOO_LARGE


def test_not_well_formed_with_line() -> None:
    data = sample().replace(b"</P_2>", b"</P_3>", 1)
    error = rejected(data, Code.NOT_WELL_FORMED)
    line = line_of(data, b"</P_3>")
    assert error.details["line"] == line
    assert f"line {line}" in error.message


def test_truncated_file() -> None:
    rejected(sample()[:-200], Code.NOT_WELL_FORMED)


def test_doctype() -> None:
    data = sample().replace(b"?>", b'?>\n<!DOCTYPE Faktura [<!ENTITY x "y">]>', 1)
    rejected(data, Code.DOCTYPE)


def test_fa2_is_named() -> None:
    data = sample().replace(b"http://crd.gov.pl/wzor/2025/06/25/13775/", b"http://crd.gov.pl/wzor/2023/06/29/12648/")
    error = rejected(data, Code.NOT_FA3)
    assert "FA(2)" in error.message


def test_another_document() -> None:
    error = rejected(b'<?xml version="1.0" encoding="UTF-8"?>\n<Zamowienie xmlns="urn:x"/>', Code.NOT_FA3)
    assert error.details["root"] == "Zamowienie"


def test_xsd_error_with_line_and_readable_element() -> None:
    data = sample().replace(b"<P_1>2026-02-15</P_1>", b"<P_1>15.02.2026</P_1>")
    error = rejected(data, Code.XSD)
    assert error.details["line"] == P1_LINE
    assert "P_1" in error.message and "{http" not in error.message
    assert error.details["errors"][0].startswith(f"line {P1_LINE}: ")


def test_xsd_missing_element() -> None:
    data = sample().replace(b"<P_2>FV2026/02/150</P_2>", b"")
    assert "P_6" in rejected(data, Code.XSD).message   # the element found where P_2 was expected


# --- business checks -----------------------------------------------------------------------------

def test_seller_nip_must_be_the_company() -> None:
    with pytest.raises(InvoiceRejected) as caught:
        check(sample(), nip="5265877635")
    error = caught.value
    assert error.code == Code.SELLER_NIP
    assert error.details == {"sellerNip": SELLER, "companyNip": "5265877635"}


def test_issue_date_in_the_future() -> None:
    with pytest.raises(InvoiceRejected) as caught:
        check(sample(), today=dt.date(2026, 2, 14))
    assert caught.value.code == Code.P1_FUTURE
    assert caught.value.details["line"] == P1_LINE
    check(sample(), today=dt.date(2026, 2, 15))   # the same day is fine


def test_error_json_shape() -> None:
    error = rejected(b"\xef\xbb\xbf" + sample(), Code.BOM)
    body = error.to_dict()
    assert set(body) == {"stage", "code", "message", "details", "hint"}
    assert body["code"] == "bom"
    json.dumps(body)


def test_codes_are_stable() -> None:
    assert {c.value for c in Code} == {
        "empty", "not-xml", "html-page", "encoding-iso-8859-2", "nip-checksum", "bom", "encoding-utf-16",
        "encoding-windows-1250", "encoding-declaration", "not-utf8",
        "processing-instruction", "xml-version", "xml-char", "discouraged-char", "too-large", "not-well-formed",
        "doctype", "not-fa3", "xsd", "seller-nip", "p1-future"}


def test_checks_run_in_parallel_threads() -> None:
    good, bad = sample(), sample().replace(b"<P_1>2026-02-15</P_1>", b"<P_1>x</P_1>")
    failures: list[str] = []

    def work() -> None:
        for _ in range(30):
            try:
                check(good)
            except InvoiceRejected as error:
                failures.append(f"good rejected: {error}")
            try:
                check(bad)
                failures.append("bad accepted")
            except InvoiceRejected as error:
                if error.code != Code.XSD or error.details["line"] != P1_LINE:
                    failures.append(f"bad wrongly rejected: {error}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
