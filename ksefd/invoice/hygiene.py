"""Byte- and character-level checks KSeF makes before it parses an invoice (PROTOCOL.md §4.2, §13.6):
UTF-8 without BOM, a UTF-8 declaration if any, no processing instructions, XML 1.0 characters only
and none of the W3C "discouraged" ones. Old ERPs export windows-1250 or UTF-16; those get a message
that names the encoding, because "invalid byte 0xB3" tells an accountant nothing.
"""

from __future__ import annotations

import codecs
import re

from ksefd.i18n import _

from . import sniff
from .errors import Code, InvoiceRejected

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
_DECLARED_VERSION = re.compile(r"""\A<\?xml\s+version\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_DECLARED_ENCODING = re.compile(
    rb"""\A<\?xml\s+version\s*=\s*(?:"[^"]*"|'[^']*')\s+encoding\s*=\s*(?:"([^"]*)"|'([^']*)')""")

# Polish letters and typical punctuation in each single-byte code page, to recognise an old ERP's file.
_CP1250_ONLY = frozenset(b"\x8c\x8f\x9c\x9f\xa5\xb9\x84\x93\x94\x96\x97")   # Ś Ź ś ź Ą ą „ “ ” – —
_LATIN2_ONLY = frozenset(b"\xa1\xa6\xac\xb1\xb6\xbc")                       # Ą Ś Ź ą ś ź
_SHARED_POLISH = frozenset(b"\xa3\xaf\xb3\xbf\xc6\xca\xd1\xd3\xe6\xea\xf1\xf3")  # Ł Ż ł ż Ć Ę Ń Ó ć ę ń ó
_WINDOWS_1250_FAMILY = {"cp1250", "iso8859-2"}

# XML 1.0 Char production (https://www.w3.org/TR/xml/#charsets) minus what it allows, plus the
# discouraged ranges KSeF refuses: #x7F-#x84, #x86-#x9F, #xFDD0-#xFDEF, #xnFFFE-#xnFFFF.
_PLANE_ENDS = "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(1, 17))
_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufdd0-\ufdef\ufffe\uffff" + _PLANE_ENDS + "]")
# The same set split for speed: `re` scans a class with the 34 astral ranges ~15x slower than a plain one,
# and almost no invoice holds a character at or above U+FDD0 (where every other forbidden one is).
# One scan finds either the first plain-class character (then the first bad one) or the first at or above U+FDD0.
_BAD_LOW_OR_FROM_FDD0 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufdd0-\U0010ffff]")
_PI = re.compile(r"<\?([^\s?>]*)")
_COMMENT_OR_CDATA = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>", re.DOTALL)


def check_text(data: bytes) -> str:
    """All the byte- and character-level checks in KSeF's order; returns the decoded text. Files that are not
    XML at all (empty, binary, an HTML page, plain text) are named as such first (sniff.py)."""
    sniff.check_binary(data)
    check_bom(data)
    text = decode_utf8(data)
    sniff.check_text_kind(text)
    check_xml_version(text)
    check_processing_instructions(text)
    check_characters(text)
    return text


def check_bom(data: bytes) -> None:
    if data.startswith(_UTF8_BOM):
        raise InvoiceRejected(Code.BOM, _("The file starts with a UTF-8 byte order mark (BOM, bytes EF BB BF); "
                                          "KSeF refuses it (PROTOCOL.md §4.2)."), {"offset": 0})


def decode_utf8(data: bytes) -> str:
    """UTF-16/32 and windows-1250/ISO-8859-2 are named as such; any declaration must say UTF-8."""
    _reject_wide_encodings(data)
    declared = _declared_encoding(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _undecodable(data, error, declared) from None
    if declared is not None and _canonical(declared) != "utf-8":
        if _canonical(declared) in _WINDOWS_1250_FAMILY:
            code = Code.ENCODING_ISO_8859_2 if _canonical(declared) == "iso8859-2" else Code.ENCODING_WINDOWS_1250
            raise InvoiceRejected(code,
                                  _("The XML declaration says encoding=\"{declared}\"; KSeF accepts only UTF-8.",
                                    declared=declared),
                                  {"declared": declared})
        raise InvoiceRejected(Code.ENCODING_DECLARATION,
                              _("The XML declaration says encoding=\"{declared}\"; KSeF accepts only UTF-8 "
                                "(the declaration may be left out, but if present it must say UTF-8).",
                                declared=declared),
                              {"declared": declared})
    return text


def check_xml_version(text: str) -> None:
    """KSeF requires well-formed XML 1.0 (PROTOCOL.md §4.2); libxml2 would parse a 1.1 declaration quietly."""
    match = _DECLARED_VERSION.match(text)
    if match is None:
        return   # no declaration (XML 1.0 by default), or a malformed one the parser names
    version = match.group(1) if match.group(1) is not None else match.group(2)
    if version != "1.0":
        raise InvoiceRejected(Code.XML_VERSION, _("The XML declaration says version=\"{version}\"; KSeF accepts "
                                                  "only XML 1.0 (PROTOCOL.md §4.2).", version=version),
                              {"line": 1, "declared": version})


def _reject_wide_encodings(data: bytes) -> None:
    if data.startswith(_UTF32_BOMS):
        raise InvoiceRejected(Code.NOT_UTF8, _("The file is UTF-32 (it starts with a UTF-32 byte order mark); "
                                               "KSeF accepts only UTF-8."), {"encoding": "UTF-32"})
    variant = _utf16_variant(data)
    if variant is not None:
        raise InvoiceRejected(Code.ENCODING_UTF16, _("The file is {encoding}, not UTF-8: KSeF accepts only UTF-8 "
                                                     "without BOM. Re-export from the ERP as UTF-8 without BOM.",
                                                     encoding=variant),
                              {"encoding": variant})


def _utf16_variant(data: bytes) -> str | None:
    if data.startswith(b"\xff\xfe"):
        return "UTF-16 (little-endian, with BOM)"
    if data.startswith(b"\xfe\xff"):
        return "UTF-16 (big-endian, with BOM)"
    if data[:2] == b"<\x00":
        return "UTF-16 (little-endian)"
    if data[:2] == b"\x00<":
        return "UTF-16 (big-endian)"
    head = data[:512]
    # ASCII text in UTF-16 has a NUL in every other byte; a stray NUL elsewhere is an xml-char problem.
    if len(head) < 8 or head.count(0) * 3 < len(head):
        return None   # every UTF-8 invoice: the byte-by-byte count below costs ~15 µs, so only for NUL-rich heads
    printable = sum(1 for b in head if 0x20 <= b < 0x7F or b in b"\t\r\n")
    # ...and the other bytes are text: a binary file full of NULs is not UTF-16 (sniff.py names it).
    if (printable + head.count(0)) * 10 >= len(head) * 9:
        return "UTF-16 (little-endian)" if head[1::2].count(0) > head[0::2].count(0) else "UTF-16 (big-endian)"
    return None


def _declared_encoding(data: bytes) -> str | None:
    match = _DECLARED_ENCODING.match(data)
    if match is None:
        return None
    raw = match.group(1) if match.group(1) is not None else match.group(2)
    return raw.decode("ascii", "replace")


def _canonical(name: str) -> str:
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        return name.strip().lower()


def _undecodable(data: bytes, error: UnicodeDecodeError, declared: str | None) -> InvoiceRejected:
    line, column = _byte_position(data, error.start)
    bad = data[error.start]
    high = [b for b in data if b >= 0x80]
    guess = _single_byte_guess(high, declared)
    excerpt = _line_excerpt(data, error.start, "iso-8859-2" if guess == "ISO-8859-2" else "cp1250")
    details = {"line": line, "column": column, "byte": f"0x{bad:02X}", "excerpt": excerpt}
    if guess is not None:
        details["encoding"] = guess
        return InvoiceRejected(Code.ENCODING_ISO_8859_2 if guess == "ISO-8859-2" else Code.ENCODING_WINDOWS_1250,
                               _("The file is encoded in {encoding}, not UTF-8 (first non-UTF-8 byte {byte} at "
                                 "line {line}, column {column}: \"{excerpt}\"). KSeF accepts only UTF-8: re-export "
                                 "from the ERP as UTF-8 without BOM.", encoding=guess, byte=f"0x{bad:02X}",
                                 line=str(line), column=str(column), excerpt=excerpt), details)
    sniff.check_binary_content(data)
    said = ""
    if declared is not None and _canonical(declared) != "utf-8":
        details["declared"] = declared
        said = _(" (it declares encoding=\"{declared}\")", declared=declared)
    return InvoiceRejected(Code.NOT_UTF8, _("The file is not valid UTF-8{said}: byte {byte} at line {line}, column "
                                            "{column} cannot be decoded. KSeF accepts only UTF-8.", said=said,
                                            byte=f"0x{bad:02X}", line=str(line), column=str(column)), details)


def _single_byte_guess(high: list[int], declared: str | None) -> str | None:
    """'windows-1250' or 'ISO-8859-2' when the non-ASCII bytes look like Polish text in that code page."""
    cp1250 = sum(1 for b in high if b in _CP1250_ONLY)
    latin2 = sum(1 for b in high if b in _LATIN2_ONLY)
    shared = sum(1 for b in high if b in _SHARED_POLISH)
    canonical = _canonical(declared) if declared else None
    if canonical == "cp1250":
        return "windows-1250"
    if canonical == "iso8859-2":
        return "ISO-8859-2"
    if not high or (cp1250 + latin2 + shared) * 2 < len(high):
        return None
    if cp1250 > latin2:
        return "windows-1250"
    if latin2 > cp1250:
        return "ISO-8859-2"
    return "windows-1250 or ISO-8859-2"


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _line_excerpt(data: bytes, offset: int, encoding: str, width: int = 60) -> str:
    start = max(data.rfind(b"\n", 0, offset) + 1, offset - width // 2)
    end = data.find(b"\n", offset)
    end = min(end if end >= 0 else len(data), offset + width // 2)
    return data[start:end].decode(encoding, "replace").strip()


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column in characters) of `offset` in `text`."""
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def check_processing_instructions(text: str) -> None:
    """Only the XML declaration may use `<?` (PROTOCOL.md §4.2); `<?` inside comments or CDATA is text."""
    if text.find("<?", 1) < 0 and not (text.startswith("<?") and not text.startswith("<?xml ")):
        return
    hidden = [(m.start(), m.end()) for m in _COMMENT_OR_CDATA.finditer(text)]
    for match in _PI.finditer(text):
        target = match.group(1)
        if target.lower() == "xml" or any(start <= match.start() < end for start, end in hidden):
            continue   # the declaration; a misplaced one is a well-formedness error the parser names
        line, column = position(text, match.start())
        raise InvoiceRejected(Code.PROCESSING_INSTRUCTION,
                              _("Processing instruction <?{target} ...?> at line {line}, column {column}; KSeF "
                                "accepts no processing instructions (PROTOCOL.md §4.2).", target=target,
                                line=str(line), column=str(column)),
                              {"line": line, "column": column, "target": target})


def check_characters(text: str) -> None:
    match = _first_bad_character(text)
    if match is not None:
        line, column = position(text, match.start())
        raise bad_character(match.group(), {"line": line, "column": column})


def _first_bad_character(text: str) -> re.Match[str] | None:
    """_BAD_CHAR.search(text), quicker: _BAD_CHAR's set lies within the plain class plus U+FDD0 and above, so no
    bad character precedes the first match of the wider class, and the slow class runs only from a high one."""
    match = _BAD_LOW_OR_FROM_FDD0.search(text)
    if match is None or match.group() < "\ufdd0":
        return match
    return _BAD_CHAR.search(text, match.start())


def find_bad_character(value: str) -> str | None:
    """The first forbidden or discouraged character of a parsed value (text from `&#...;` references)."""
    match = _BAD_CHAR.search(value)
    return match.group() if match is not None else None


def bad_character(char: str, where: dict[str, int]) -> InvoiceRejected:
    point = ord(char)
    name = f"U+{point:04X}"
    at = _("line {line}, column {column}", line=str(where["line"]), column=str(where["column"])) \
        if "column" in where else _("line {line}", line=str(where["line"]))
    details = {**where, "character": name}
    if point < 0x20 or point in (0xFFFE, 0xFFFF):
        return InvoiceRejected(Code.XML_CHAR, _("Character {character} at {at} is not allowed in XML 1.0.",
                                                character=name, at=at), details)
    why = _(" (a C1 control character: usually a windows-1250 dash or quote converted wrongly)") \
        if 0x80 <= point <= 0x9F else ""
    return InvoiceRejected(Code.DISCOURAGED_CHAR, _("Character {character} at {at} is a W3C discouraged "
                                                    "character{why}; KSeF refuses it (PROTOCOL.md §4.2).",
                                                    character=name, at=at, why=why), details)
