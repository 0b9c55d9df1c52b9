"""`check_invoice`: every local check KSeF would make, in KSeF's order, before any quota is spent
(issue #5 item 3, PROTOCOL.md §4.2, §13.6). Pure: bytes in, `CheckedInvoice` or `InvoiceRejected` out."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

from lxml import etree

from ksefd.i18n import N_, _, translate

from . import facts as _facts
from . import hygiene, schema
from .errors import Code, InvoiceRejected
from .models import CheckedInvoice

MAX_SIZE = 1_000_000                    # bytes, without attachments (PROTOCOL.md §4.2: MB = 10^6 bytes)
MAX_SIZE_WITH_ATTACHMENT = 3_000_000    # bytes, with Zalacznik (batch sessions only)


def check_invoice(data: bytes, *, file_name: str, company_nip: str, today: dt.date,
                  max_size: int = MAX_SIZE, max_size_with_attachment: int = MAX_SIZE_WITH_ATTACHMENT,
                  ) -> CheckedInvoice:
    """Check one invoice file. `today` is the Europe/Warsaw calendar day (`ksefd.clock.warsaw_today`).

    Order: BOM, encoding, encoding declaration, XML version (1.0), processing instructions, characters, size,
    well-formedness (and no DOCTYPE), FA(3) root, XSD, seller NIP, P_1 not in the future.
    """
    text = hygiene.check_text(data)
    _check_size(len(data), max_size_with_attachment, N_("with attachments"))
    root = schema.parse(data)
    if "&#" in text:
        _check_referenced_characters(root)
    schema.check_form(root)
    schema.validate(root)
    found = _facts.read_facts(root)
    if not found.has_attachment:
        _check_size(len(data), max_size, N_("without attachments"))
    _facts.check_seller(found, company_nip)
    _facts.check_issue_date(found, today)
    digest = hashlib.sha256(data).digest()
    return CheckedInvoice(
        data=data, file_name=file_name, sha256=digest, sha256_b64=base64.b64encode(digest).decode("ascii"),
        size=len(data), seller_nip=found.seller_nip, issue_date=found.issue_date,
        invoice_number=found.invoice_number, invoice_type=found.invoice_type, buyer=found.buyer,
        gross_total=found.gross_total, currency=found.currency, has_attachment=found.has_attachment,
    )


def _check_size(size: int, limit: int, kind: str) -> None:
    if size > limit:
        raise InvoiceRejected(Code.TOO_LARGE, _("The file has {size} bytes; KSeF accepts at most {limit} bytes for "
                                                "an invoice {kind}.", size=_n(size), limit=_n(limit),
                                                kind=translate(kind)),
                              {"size": size, "limit": limit})


def _n(number: int) -> str:
    return f"{number:_}".replace("_", " ")


def _check_referenced_characters(root: etree._Element) -> None:
    """`&#x85;` passes the text check but is the same discouraged character once parsed."""
    for element in root.iter(etree.Element):
        values = [element.text, element.tail, *element.attrib.values()]
        for value in values:
            char = hygiene.find_bad_character(value) if value else None
            if char is not None:
                line = element.sourceline
                raise hygiene.bad_character(char, {"line": line if isinstance(line, int) else 0})
