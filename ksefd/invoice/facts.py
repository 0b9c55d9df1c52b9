"""The facts the daemon needs from a schema-valid FA(3) invoice, read from the parsed tree (the bytes
are never re-serialised), and the business checks KSeF makes on them (PROTOCOL.md §4.2)."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal

from lxml import etree

from ksefd.i18n import _

from .errors import Code, InvoiceRejected
from .models import Buyer
from .schema import FA3_NS


@dataclass(frozen=True, slots=True)
class Facts:
    seller_nip: str
    issue_date: dt.date
    invoice_number: str
    invoice_type: str
    buyer: Buyer
    gross_total: Decimal
    currency: str
    has_attachment: bool
    p1_line: int


@functools.cache
def _q(name: str) -> str:
    return f"{{{FA3_NS}}}{name}"


def _find(node: etree._Element | None, *path: str) -> etree._Element | None:
    """The first child element named path[0], then its first child named path[1], ...: the same element
    `node.find("{ns}a/{ns}b")` gives, but through lxml's C child iterator with the Clark names built once,
    not through ElementPath's Python path machinery (a sixth of the daemon's check CPU, issue #16)."""
    for name in path:
        if node is None:
            return None
        node = next(node.iterchildren(_q(name)), None)
    return node


def _text(node: etree._Element | None, *path: str) -> str | None:
    found = _find(node, *path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _required(node: etree._Element | None, *path: str, within: str = "") -> str:
    """`within` names the element `node` is (for the message), when the path starts below the root."""
    value = _text(node, *path)
    if value is None:   # the XSD makes each of these mandatory; guard against a schema change
        element = "/".join((within, *path) if within else path)
        raise InvoiceRejected(Code.XSD, _("Element {element} is missing.", element=element),
                              {"element": element})
    return value


def read_facts(root: etree._Element) -> Facts:
    """Expects a document valid against the FA(3) schema. Fa is looked up once for its five facts."""
    fa = _find(root, "Fa")
    p1 = _find(fa, "P_1")
    return Facts(
        seller_nip=_required(root, "Podmiot1", "DaneIdentyfikacyjne", "NIP"),
        issue_date=dt.date.fromisoformat(_required(p1, within="Fa/P_1")),
        invoice_number=_required(fa, "P_2", within="Fa"),
        invoice_type=_required(fa, "RodzajFaktury", within="Fa"),
        buyer=_buyer(_find(root, "Podmiot2", "DaneIdentyfikacyjne")),
        gross_total=Decimal(_required(fa, "P_15", within="Fa")),
        currency=_required(fa, "KodWaluty", within="Fa"),
        has_attachment=_find(root, "Zalacznik") is not None,
        p1_line=_line(p1),
    )


def _line(node: etree._Element | None) -> int:
    line = node.sourceline if node is not None else None
    return line if isinstance(line, int) else 0


def _buyer(ids: etree._Element | None) -> Buyer:
    """Podmiot2's identifier as KSeF's metadata types it (openapi.json BuyerIdentifier)."""
    name = _text(ids, "Nazwa")
    if (nip := _text(ids, "NIP")) is not None:
        return Buyer("Nip", nip, name)
    if (vat_ue := _text(ids, "NrVatUE")) is not None:
        return Buyer("VatUe", f"{_text(ids, 'KodUE') or ''}{vat_ue}", name)
    if (other := _text(ids, "NrID")) is not None:
        return Buyer("Other", other, name)
    return Buyer("None", None, name)


def check_seller(facts: Facts, company_nip: str) -> None:
    """Podmiot1 must be the company whose outbox the file came from: the context's NIP."""
    if facts.seller_nip != company_nip:
        if not nip_checksum_ok(facts.seller_nip):
            raise InvoiceRejected(Code.NIP_CHECKSUM, _("The seller NIP (Podmiot1) {nip} is not a valid NIP: its "
                                                       "check digit (the last one) does not match the first nine, "
                                                       "so a digit is mistyped. This outbox belongs to NIP "
                                                       "{company_nip}.", nip=facts.seller_nip,
                                                       company_nip=company_nip),
                                  {"sellerNip": facts.seller_nip, "companyNip": company_nip})
        raise InvoiceRejected(Code.SELLER_NIP, _("The seller NIP (Podmiot1) is {nip}, but this outbox belongs to the "
                                                 "company with NIP {company_nip}.", nip=facts.seller_nip,
                                                 company_nip=company_nip),
                              {"sellerNip": facts.seller_nip, "companyNip": company_nip})


def check_issue_date(facts: Facts, today: dt.date) -> None:
    """P_1 must not be later than the day KSeF accepts the invoice (PROTOCOL.md §4.2); `today` is the
    Europe/Warsaw calendar day, as KSeF compares days in Polish time (PROTOCOL.md §8.3)."""
    if facts.issue_date > today:
        raise InvoiceRejected(Code.P1_FUTURE, _("The issue date P_1 is {issue_date}, after today ({today}, Polish "
                                                "time); KSeF refuses invoices dated in the future.",
                                                issue_date=facts.issue_date.isoformat(), today=today.isoformat()),
                              {"line": facts.p1_line, "issueDate": facts.issue_date.isoformat(),
                               "today": today.isoformat()})


def nip_checksum_ok(nip: str) -> bool:
    """NIP check digit: weights 6,5,7,2,3,4,5,6,7; the sum mod 11 is the 10th digit (10 is never valid)."""
    if len(nip) != 10 or not nip.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(nip[:9], (6, 5, 7, 2, 3, 4, 5, 6, 7), strict=True)) % 11
    return total != 10 and total == int(nip[9])
