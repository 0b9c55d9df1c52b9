"""Messages an accountant can act on (issue #15 point 5): plain sentences with the line and column once, no libxml2
internals; entity bombs under the DOCTYPE rule; binary files, HTML pages and plain text named as what they are;
schema errors naming the field and its meaning; a NIP with a wrong check digit; ISO-8859-2 by name."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from ksefd.invoice import Code, InvoiceRejected, check_invoice
from ksefd.invoice.facts import nip_checksum_ok
from tests.conftest import SAMPLES

pytestmark = pytest.mark.usefixtures("english")   # the checker's messages as their ids

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_1.xml").read_bytes()
LIBXML2_WORDS = re.compile(r"xmlCtxt|XML_PARSE|xmlParse|, line \d+, column \d+.*line \d+|Expected is|facet|atomic type")


def rejected(data: bytes, code: Code, nip: str = "9999999999") -> InvoiceRejected:
    with pytest.raises(InvoiceRejected) as caught:
        check_invoice(data, file_name="FV.xml", company_nip=nip, today=dt.date(2026, 11, 22))
    error = caught.value
    assert error.code == code, error.to_dict()
    assert not LIBXML2_WORDS.search(error.message), error.message
    assert error.hint
    return error


def line_of(data: bytes, needle: bytes) -> int:
    return data[:data.index(needle)].count(b"\n") + 1


BILLION_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'.encode()
                             for i in range(1, 10))
                  + b"]>\n<lolz>&lol9;</lolz>")


# --- not well-formed --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "data", "words"), [
    ("tag-mismatch", SAMPLE.replace(b"</P_2>", b"</P_3>", 1), ["<P_2>", "</P_3>", "same name"]),
    ("bare-ampersand", SAMPLE.replace(b"<P_2>", b"<P_2>A & B ", 1), ["&amp;"]),
    ("unknown-entity", SAMPLE.replace(b"<P_2>", b"<P_2>&nbsp;", 1), ["&nbsp;", "&#160;"]),
    ("less-than", SAMPLE.replace(b"<P_2>", b"<P_2>a < b", 1), ["&lt;"]),
    ("declaration-late", b"\n" + SAMPLE, ["very first thing"]),
    ("two-roots", SAMPLE + b"<Faktura/>", ["after the end"]),
    ("unclosed-comment", SAMPLE.replace(b"<Naglowek>", b"<!-- <Naglowek>", 1), ["-->"]),
    ("too-deep", b"<a>" * 300 + b"</a>" * 300, ["256 levels"]),
])
def test_not_well_formed_is_a_plain_sentence_with_one_position(name: str, data: bytes, words: list[str]) -> None:
    error = rejected(data, Code.NOT_WELL_FORMED)
    for word in words:
        assert word in error.message, error.message
    assert error.message.count(f"line {error.details['line']}") == 1, error.message
    assert "XML_PARSE_HUGE" not in str(error.details) and "xmlCtxt" not in str(error.details)


def test_a_truncated_file_is_called_truncated() -> None:
    for cut in (SAMPLE[:-200], SAMPLE[:SAMPLE.index(b"</P_2>") + 6], SAMPLE[:SAMPLE.index(b"</P_2>") - 3]):
        error = rejected(cut, Code.NOT_WELL_FORMED)
        assert "ends before the XML is complete" in error.message


def test_tag_mismatch_names_both_lines() -> None:
    data = SAMPLE.replace(b"</P_2>", b"\n</P_3>", 1)
    error = rejected(data, Code.NOT_WELL_FORMED)
    line = line_of(data, b"</P_3>")
    assert error.details["line"] == line and f"<P_2> opened at line {line - 1} is closed" in error.message


# --- DOCTYPE, entity bombs ---------------------------------------------------------------------------------------

def test_an_entity_bomb_is_refused_by_the_doctype_rule() -> None:
    error = rejected(BILLION_LAUGHS, Code.DOCTYPE)
    assert error.details["doctype"] == "lolz" and error.details["entities"] == 10
    assert "amplification" not in error.message.lower()


def test_an_external_entity_is_refused_by_the_doctype_rule() -> None:
    data = SAMPLE.replace(b"?>", b'?>\n<!DOCTYPE Faktura [<!ENTITY x SYSTEM "file:///etc/passwd">]>', 1)
    data = data.replace(b"<P_2>FV2026/02/150</P_2>", b"<P_2>&x;</P_2>")
    assert rejected(data, Code.DOCTYPE).details["line"] == 2


def test_doctype_words_inside_a_comment_are_text() -> None:
    check_invoice(SAMPLE.replace(b"<Naglowek>", b"<!-- <!DOCTYPE x> --><Naglowek>", 1), file_name="FV.xml",
                  company_nip="9999999999", today=dt.date(2026, 11, 22))


# --- not an XML file ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "kind"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "PNG"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    (b"PK\x03\x04\x14\x00\x06\x00" + bytes(100), "ZIP"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "Office"),
    (bytes(range(256)) * 8, "binary"),
    (b"\x00\x01\x02\x03\x00\x00\x05" * 100, "binary"),
])
def test_binary_files_are_named_not_reexport_as_utf8(data: bytes, kind: str) -> None:
    error = rejected(data, Code.NOT_XML)
    assert kind in error.message and "not an XML file" in error.message
    assert "UTF-8" not in error.message and "UTF-8" not in error.hint


@pytest.mark.parametrize(("data", "kind"), [(b"Numer;Data;Kwota\nFV/1;2026-01-01;100\n", "CSV"),
                                            (b'{"invoice": "FV/1"}', "JSON"), (b"Faktura FV/1", "")])
def test_text_that_is_not_xml_is_named(data: bytes, kind: str) -> None:
    error = rejected(data, Code.NOT_XML)
    assert kind in error.message and "starts with" in error.message


@pytest.mark.parametrize("data", [b"", b"  \r\n\t"])
def test_an_empty_file(data: bytes) -> None:
    assert "empty" in rejected(data, Code.EMPTY).message


@pytest.mark.parametrize("data", [
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><p>nginx<br></body></html>",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head><title>502 Bad '
    b"Gateway</title></head><body/></html>",
    b"<HTML>\n<HEAD><TITLE>502 Bad Gateway</TITLE></HEAD></HTML>",
])
def test_an_html_page_is_an_html_page_not_a_tag_mismatch(data: bytes) -> None:
    error = rejected(data, Code.HTML_PAGE)
    assert "HTML page" in error.message and '"502 Bad Gateway"' in error.message


# --- schema errors name the field and its meaning ------------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "words"), [
    (b"<P_2>FV2026/02/150</P_2>", b"", ["P_2 (invoice number / numer faktury)", "missing", "P_6"]),
    (b"<P_1>2026-02-15</P_1>", b"<P_1>15.02.2026</P_1>", ["P_1 (issue date / data wystawienia)", "'15.02.2026'",
                                                          "YYYY-MM-DD"]),
    (b"<P_15>2051</P_15>", b"<P_15>2051,00</P_15>", ["P_15 (total amount due (gross)", "a dot as the decimal"]),
    (b"<P_13_1>", b"<P_13_1>1 ", ["P_13_1 (net amount at the 23% or 22% rate"]),
    (b"<RodzajFaktury>VAT</RodzajFaktury>", b"<RodzajFaktury>FV</RodzajFaktury>",
     ["RodzajFaktury (invoice type", "'FV'", "VAT, KOR, ZAL"]),
    (b"<KodWaluty>PLN</KodWaluty>", b"<KodWaluty>zl</KodWaluty>", ["KodWaluty (currency code", "ISO 4217"]),
    (b"<NIP>1111111111</NIP>", b"<NIP>111-111-11-11</NIP>", ["NIP (tax ID", "Podmiot2 (buyer / nabywca)",
                                                             "10 digits"]),
    (b"<P_12>23</P_12>", b"<P_12>24</P_12>", ["P_12 (VAT rate / stawka podatku)", "invoice line 1 (FaWiersz)",
                                              "23, 22, 8"]),
    (b"<P_2>FV2026/02/150</P_2>", b"<P_2></P_2>", ["P_2 (invoice number / numer faktury)", "empty"]),
])
def test_schema_errors_name_the_field_and_its_meaning(old: bytes, new: bytes, words: list[str]) -> None:
    assert old in SAMPLE
    error = rejected(SAMPLE.replace(old, new, 1), Code.XSD)
    for word in words:
        assert word in error.message, error.message
    assert error.details["schemaMessages"][0].startswith(f"line {error.details['line']}: Element '")
    assert error.details["errors"][0].startswith(f"line {error.details['line']}: ")


# --- NIP check digit ---------------------------------------------------------------------------------------------

def test_a_seller_nip_with_a_wrong_check_digit_has_its_own_code() -> None:
    error = rejected(SAMPLE.replace(b"<NIP>9999999999</NIP>", b"<NIP>9999999990</NIP>", 1), Code.NIP_CHECKSUM)
    assert error.details == {"sellerNip": "9999999990", "companyNip": "9999999999"}
    assert "check digit" in error.message and "9999999990" in error.message


def test_a_valid_nip_of_another_company_is_still_seller_nip() -> None:
    rejected(SAMPLE.replace(b"<NIP>9999999999</NIP>", b"<NIP>5265877635</NIP>", 1), Code.SELLER_NIP)


@pytest.mark.parametrize(("nip", "ok"), [("5265877635", True), ("9999999999", True), ("1234567890", False),
                                         ("5265877636", False), ("123456789", False), ("52658776X5", False)])
def test_nip_checksum(nip: str, ok: bool) -> None:
    assert nip_checksum_ok(nip) is ok
