"""Why a local check refused an invoice: a stable code, a message, details and a hint a person can act on.

The codes are a public contract: they go into `rejected/NAME.error.json` and ERPs may match on them,
so a code is never renamed or reused for another meaning (add a new one instead).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ksefd.i18n import N_

STAGE = "local-check"   # the `stage` of error.json: refused before any KSeF quota was spent (issue #5 item 3)

# Hints are English message ids (N_): error.json carries them in the config's language (daemon/error_text.py).
_REEXPORT = N_("Re-export the invoice from the ERP as UTF-8 without BOM and drop it into the outbox again.")


class Code(StrEnum):
    EMPTY = "empty"                                 # no bytes, or only white space
    NOT_XML = "not-xml"                             # an image, PDF, archive, other binary, or text that is not XML
    HTML_PAGE = "html-page"                         # a web page (an error page saved instead of the invoice)
    BOM = "bom"                                     # UTF-8 byte order mark at the start (PROTOCOL.md §4.2)
    ENCODING_UTF16 = "encoding-utf-16"              # UTF-16 file (BOM or NUL bytes)
    ENCODING_WINDOWS_1250 = "encoding-windows-1250"  # windows-1250 (or either of the two), declared or detected
    ENCODING_ISO_8859_2 = "encoding-iso-8859-2"     # ISO-8859-2 (Latin-2), declared or detected
    ENCODING_DECLARATION = "encoding-declaration"   # UTF-8 bytes, but the prolog names another encoding
    NOT_UTF8 = "not-utf8"                           # bytes that are not UTF-8, in no recognisable encoding
    PROCESSING_INSTRUCTION = "processing-instruction"
    XML_VERSION = "xml-version"                     # the declaration says another version than XML 1.0
    XML_CHAR = "xml-char"                           # a character XML 1.0 forbids (control characters, U+FFFE/F)
    DISCOURAGED_CHAR = "discouraged-char"           # a W3C "discouraged" character KSeF refuses
    TOO_LARGE = "too-large"
    NOT_WELL_FORMED = "not-well-formed"
    DOCTYPE = "doctype"                             # a DOCTYPE (entities could change what KSeF reads)
    NOT_FA3 = "not-fa3"                             # another document type or form version (FA(2), PEF, ...)
    XSD = "xsd"
    SELLER_NIP = "seller-nip"
    NIP_CHECKSUM = "nip-checksum"                   # the seller's NIP has a wrong check digit (a typo)
    P1_FUTURE = "p1-future"


HINTS: dict[Code, str] = {
    Code.EMPTY: N_("Export the invoice from the ERP again. If the ERP writes files slowly, let it write elsewhere (or "
                   "under a temporary name) and move the finished file into the outbox."),
    Code.NOT_XML: N_("Drop the invoice's XML file as the ERP exports it (FA(3) structure), not a scan, PDF, image, "
                     "spreadsheet or archive of it."),
    Code.HTML_PAGE: N_("Export the invoice from the ERP again as FA(3) XML: this file is a web page (an error page "
                       "from the ERP, a portal or a proxy), not the invoice."),
    Code.BOM: N_("Save the file as UTF-8 without BOM (in the ERP's export settings, or in the editor: "
                 "'UTF-8' rather than 'UTF-8 with BOM')."),
    Code.ENCODING_UTF16: _REEXPORT,
    Code.ENCODING_WINDOWS_1250: _REEXPORT,
    Code.ENCODING_ISO_8859_2: _REEXPORT,
    Code.ENCODING_DECLARATION: N_("Set the XML declaration to <?xml version=\"1.0\" encoding=\"UTF-8\"?> and make "
                                  "sure the bytes really are UTF-8. Re-export the invoice from the ERP as UTF-8 "
                                  "without BOM and drop it into the outbox again."),
    Code.NOT_UTF8: _REEXPORT,
    Code.PROCESSING_INSTRUCTION: N_("Remove the processing instruction (<?...?>) from the file; KSeF allows only "
                                    "the XML declaration at the very start."),
    Code.XML_VERSION: N_("Set the XML declaration to <?xml version=\"1.0\" encoding=\"UTF-8\"?> (in the ERP's export "
                         "settings, or ask its supplier): KSeF accepts only XML 1.0."),
    Code.XML_CHAR: N_("Remove the character at the given line and column; it is not allowed in XML 1.0 "
                      "(often a stray control character pasted into a description)."),
    Code.DISCOURAGED_CHAR: N_("Remove or replace the character at the given line and column; KSeF refuses W3C "
                              "'discouraged' characters (often a windows-1250 dash or quote converted wrongly)."),
    Code.TOO_LARGE: N_("Split the invoice or shrink it: KSeF accepts at most 1 MB per invoice (3 MB with "
                       "attachments, which only batch sessions accept)."),
    Code.NOT_WELL_FORMED: N_("Fix the XML at the given line; the file is not well-formed XML, so the ERP export is "
                             "broken or the file was edited by hand."),
    Code.DOCTYPE: N_("Remove the <!DOCTYPE ...> declaration; an FA(3) invoice needs none."),
    Code.NOT_FA3: N_("Export the invoice in the FA(3) structure (namespace http://crd.gov.pl/wzor/2025/06/25/13775/); "
                     "DEMO and production KSeF accept no other FA version."),
    Code.XSD: N_("Correct the element named in the message (see the line number) so the invoice is valid against "
                 "the FA(3) schema, then drop it again."),
    Code.SELLER_NIP: N_("Drop the invoice into the outbox of the company whose NIP is the seller's (Podmiot1), or "
                        "correct the seller NIP in the ERP."),
    Code.NIP_CHECKSUM: N_("Correct the seller NIP (Podmiot1) in the ERP: its last digit does not match the first "
                          "nine, so a digit is mistyped. The company's NIP is in the message."),
    Code.P1_FUTURE: N_("Correct the issue date (P_1): KSeF refuses an invoice dated after the day it is sent. "
                       "Drop it again on or after its issue date."),
}


class InvoiceRejected(Exception):
    """A local check failed. `details` is JSON-compatible (line/column, values found and expected)."""

    stage = STAGE

    def __init__(self, code: Code, message: str, details: dict[str, Any] | None = None,
                 hint: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.hint = hint if hint is not None else HINTS[code]

    def to_dict(self) -> dict[str, Any]:
        """The body of `rejected/NAME.error.json` (DESIGN.md folder contract)."""
        return {"stage": self.stage, "code": str(self.code), "message": self.message,
                "details": self.details, "hint": self.hint}
