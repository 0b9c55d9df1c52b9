"""What kind of file this is, when it is not an invoice at all (issue #15 point 5): an empty file, an image,
a PDF, an archive, an HTML page or plain text. "Re-export as UTF-8" or "tag mismatch" would send an
accountant looking in the wrong place; "this is a PNG image, not an XML file" does not.
"""

from __future__ import annotations

import html
import re

from ksefd.i18n import N_, _, translate

from .errors import Code, InvoiceRejected

# (leading bytes, what the file is): the formats people drop by mistake (scans, PDFs, archives, Office files).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", N_("a PNG image")),
    (b"%PDF-", N_("a PDF document")),
    (b"PK\x03\x04", N_("a ZIP archive (or an Office document: DOCX, XLSX, ODT)")),
    (b"PK\x05\x06", N_("an empty ZIP archive")),
    (b"\x1f\x8b", N_("a GZIP archive")),
    (b"\xff\xd8\xff", N_("a JPEG image")),
    (b"GIF87a", N_("a GIF image")),
    (b"GIF89a", N_("a GIF image")),
    (b"II*\x00", N_("a TIFF image (a scan?)")),
    (b"MM\x00*", N_("a TIFF image (a scan?)")),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", N_("an old Microsoft Office document (DOC, XLS)")),
    (b"Rar!\x1a\x07", N_("a RAR archive")),
    (b"7z\xbc\xaf\x27\x1c", N_("a 7-Zip archive")),
    (b"{\\rtf", N_("an RTF document")),
    (b"BZh", N_("a BZIP2 archive")),
)
_CONTROL_BYTES = frozenset(range(0x09)) | frozenset(range(0x0E, 0x20))
_HTML = re.compile(r"\A\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html\b|html[\s>])",
                   re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def check_binary(data: bytes) -> None:
    """Before decoding: an empty file, a known binary format, or bytes that are mostly control codes."""
    if not data.strip():
        said = _("The file is empty ({size} bytes, only spaces): the ERP wrote nothing, or the file was copied "
                 "before it was written.", size=str(len(data))) if data else \
            _("The file is empty (0 bytes): the ERP wrote nothing, or the file was copied before it was written.")
        raise InvoiceRejected(Code.EMPTY, said, {"size": len(data)})
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            raise not_xml(kind)


def check_binary_content(data: bytes) -> None:
    """Bytes that are not UTF-8 and are mostly control codes: a binary file of a kind not listed above."""
    head = data[:4096]
    if sum(1 for b in head if b in _CONTROL_BYTES) * 10 > len(head):
        raise not_xml(N_("a binary file"))


def not_xml(kind: str) -> InvoiceRejected:
    """`kind`: a message id (N_), shown in the reader's language; `looksLike` in details keeps the English."""
    return InvoiceRejected(Code.NOT_XML, _("This is not an XML file: it looks like {kind}. KSeF accepts an invoice "
                                           "only as FA(3) XML.", kind=translate(kind)), {"looksLike": kind})


def check_text_kind(text: str) -> None:
    """After decoding: an HTML page (an error page saved instead of the invoice) or text that is not XML."""
    if _HTML.match(text):
        title = _TITLE.search(text[:10_000])
        shown = " ".join(html.unescape(title.group(1)).split())[:80] if title else ""
        said = _("This is an HTML page (\"{title}\"), not an invoice: often an error page saved instead of the "
                 "invoice.", title=shown) if shown else \
            _("This is an HTML page, not an invoice: often an error page saved instead of the invoice.")
        raise InvoiceRejected(Code.HTML_PAGE, said, {"title": shown})
    start = text.lstrip()
    if not start.startswith("<"):
        if sum(1 for c in start[:4096] if ord(c) in _CONTROL_BYTES) * 10 > len(start[:4096]):
            raise not_xml(N_("a binary file"))
        first = start.splitlines()[0][:60] if start else ""
        kind = _(" (it looks like JSON)") if first.startswith(("{", "[")) else \
            _(" (it looks like CSV)") if first.count(";") + first.count(",") + first.count("\t") >= 2 else ""
        raise InvoiceRejected(Code.NOT_XML, _("This is not an XML file{kind}: it starts with \"{first}\", not with "
                                              "'<'. KSeF accepts an invoice only as FA(3) XML.", kind=kind,
                                              first=first),
                              {"start": first})
