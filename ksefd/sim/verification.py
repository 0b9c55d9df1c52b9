"""Technical checks of one invoice file, as KSeF runs them before any business rule
(PROTOCOL.md §4.2, `D:faktury/weryfikacja-faktury.md`): size, UTF-8 without BOM, an encoding
declaration (if any) saying UTF-8, no processing instructions, no W3C "discouraged" characters,
well-formed XML 1.0 without a DTD, and validity against the session's schema (FA(3)).

`check_file` is pure (no world, no I/O) so the pipeline can run it in a worker thread. It returns
either a `Rejection` (invoice status 430 with details saying what is wrong and how to fix it) or the
parsed root element plus whether the document carries an attachment (`Zalacznik`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from . import fa3

MB = 1_000_000          # KSeF limits are decimal megabytes (PROTOCOL.md §4.2: 1 000 000 bytes)
DEFAULT_MAX_SIZE = 1 * MB
DEFAULT_MAX_SIZE_WITH_ATTACHMENT = 3 * MB

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_DECLARATION = re.compile(rb"""^<\?xml\s[^>]*?encoding\s*=\s*["']([^"']+)["']""")
# W3C XML 1.0 §2.2 "discouraged" characters, as KSeF lists them.
_DISCOURAGED = re.compile("[\x7f-\x84\x86-\x9f\ufdd0-\ufdef"
                          "\U0001fffe\U0001ffff\U0002fffe\U0002ffff\U0003fffe\U0003ffff\U0004fffe\U0004ffff"
                          "\U0005fffe\U0005ffff\U0006fffe\U0006ffff\U0007fffe\U0007ffff\U0008fffe\U0008ffff"
                          "\U0009fffe\U0009ffff\U000afffe\U000affff\U000bfffe\U000bffff\U000cfffe\U000cffff"
                          "\U000dfffe\U000dffff\U000efffe\U000effff\U000ffffe\U000fffff\U0010fffe\U0010ffff]")
# The same characters as UTF-8 byte sequences: searched in the bytes, three times faster than in the decoded
# text; valid UTF-8 (checked first) only matches whole characters (tests/sim/test_verification_encoding.py).
# Each starts with one of _DISCOURAGED_LEADS: a file without any of those bytes (most) needs no search at all.
_DISCOURAGED_LEADS = (b"\x7f", b"\xc2", b"\xef", b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
_DISCOURAGED_UTF8 = re.compile(rb"\x7f|\xc2[\x80-\x84\x86-\x9f]|\xef\xb7[\x90-\xaf]"     # U+7F..9F, U+FDD0..FDEF
                               rb"|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")     # U+nFFFE, U+nFFFF (n = 1..16)
_ATTACHMENT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Zalacznik[\s>/]")


@dataclass(frozen=True)
class Rejection:
    code: int
    details: list[str]


@dataclass(frozen=True)
class Checked:
    root: etree._Element
    has_attachment: bool


def _reject(*details: str) -> Rejection:
    return Rejection(430, list(details))


def _size_check(plain: bytes, max_size: int, max_with_attachment: int) -> Rejection | None:
    if len(plain) > max_with_attachment:
        return _reject(f"Rozmiar pliku faktury {len(plain)} B przekracza dopuszczalne {max_with_attachment} B "
                       "(faktura z załącznikiem).")
    if len(plain) > max_size and not _ATTACHMENT.search(plain):
        return _reject(f"Rozmiar pliku faktury {len(plain)} B przekracza dopuszczalne {max_size} B "
                       "(faktura bez załącznika).")
    return None


def _encoding_check(plain: bytes) -> tuple[str | None, Rejection | None]:
    if plain.startswith(_BOMS):
        return None, _reject("Plik faktury zawiera znacznik BOM; wyślij UTF-8 bez BOM.")
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _reject(f"Plik faktury nie jest poprawnie zakodowany w UTF-8 (bajt {exc.start}); "
                             "zapisz go jako UTF-8.")
    declared = _DECLARATION.match(plain)
    if declared and declared.group(1).decode("ascii", "replace").strip().lower() not in ("utf-8", "utf8"):
        return None, _reject(f"Deklaracja XML wskazuje kodowanie {declared.group(1).decode('ascii', 'replace')}; "
                             "dozwolone jest wyłącznie UTF-8.")
    suspect = any(lead in plain for lead in _DISCOURAGED_LEADS) and _DISCOURAGED_UTF8.search(plain)
    found = _DISCOURAGED.search(text) if suspect else None
    if found:
        line = text.count("\n", 0, found.start()) + 1
        return None, _reject(f"Plik faktury zawiera niedozwolony znak U+{ord(found.group()):04X} (linia {line}).")
    return text, None


def _parse(plain: bytes) -> tuple[etree._Element | None, Rejection | None]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_pis=False,
                             huge_tree=False)
    try:
        root = etree.fromstring(plain, parser)
    except etree.XMLSyntaxError as exc:
        return None, _reject(f"Plik faktury nie jest poprawnym dokumentem XML: {exc}")
    version = root.getroottree().docinfo.xml_version
    if version != "1.0":   # libxml2 parses a 1.1 declaration quietly; KSeF requires XML 1.0 (PROTOCOL.md §4.2)
        return None, _reject(f"Deklaracja XML wskazuje wersję {version}; dozwolony jest wyłącznie XML 1.0 "
                             "(<?xml version=\"1.0\" encoding=\"UTF-8\"?>).")
    doctype: str = root.getroottree().docinfo.doctype   # type: ignore[union-attr]
    if doctype:
        return None, _reject("Plik faktury zawiera deklarację DTD (DOCTYPE), która nie jest dozwolona.")
    pis = [*root.itersiblings(etree.ProcessingInstruction, preceding=True),
           *root.itersiblings(etree.ProcessingInstruction),
           *root.iter(etree.ProcessingInstruction)]
    if pis:
        return None, _reject(f"Plik faktury zawiera instrukcję przetwarzania <?{pis[0].target} ...?>, "
                             "która nie jest dozwolona.")
    return root, None


def check_file(plain: bytes, *, max_size: int = DEFAULT_MAX_SIZE,
               max_size_with_attachment: int = DEFAULT_MAX_SIZE_WITH_ATTACHMENT) -> Rejection | Checked:
    """Run the technical checks in KSeF's order; the first failure decides (status 430)."""
    rejection = _size_check(plain, max_size, max_size_with_attachment)
    if rejection:
        return rejection
    _, rejection = _encoding_check(plain)
    if rejection:
        return rejection
    root, rejection = _parse(plain)
    if rejection or root is None:
        return rejection or _reject("Pusty plik faktury.")
    if root.tag != f"{{{fa3.NS}}}Faktura":
        return _reject(f"Element główny {root.tag} nie odpowiada schemie {fa3.SYSTEM_CODE} "
                       f"(oczekiwano Faktura w przestrzeni nazw {fa3.NS}).")
    errors = fa3.validation_errors(root)
    if errors:
        return _reject("Dokument nie jest zgodny ze schemą FA (3).", *errors)
    return Checked(root, root.find(f"{{{fa3.NS}}}Zalacznik") is not None)
