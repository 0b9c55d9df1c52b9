"""`read_facts` walks children through lxml's C iterator (issue #16); it must give exactly what the former
ElementPath lookups (`find` with namespaced paths) gave, on every official sample and every corpus file that
parses, valid against the schema or not (a missing mandatory element raises the same error)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from lxml import etree

from ksefd.invoice import Code, InvoiceRejected, schema
from ksefd.invoice.facts import Facts, read_facts
from ksefd.invoice.models import Buyer
from tests.conftest import SAMPLES
from tests.corpus.generate import CONTENT, cases

pytestmark = pytest.mark.usefixtures("english")


def _former(root: etree._Element) -> Facts:
    """The reading before issue #16, kept verbatim in spirit: one `find` per path step."""
    def q(name: str) -> str:
        return f"{{{schema.FA3_NS}}}{name}"

    def find(node: etree._Element | None, *path: str) -> etree._Element | None:
        for name in path:
            if node is None:
                return None
            node = node.find(q(name))
        return node

    def text(node: etree._Element | None, *path: str) -> str | None:
        found = find(node, *path)
        return None if found is None or found.text is None else found.text.strip()

    def required(*path: str) -> str:
        value = text(root, *path)
        if value is None:
            raise InvoiceRejected(Code.XSD, "Element {element} is missing.".format(element="/".join(path)),
                                  {"element": "/".join(path)})
        return value

    ids = find(root, "Podmiot2", "DaneIdentyfikacyjne")
    name = text(ids, "Nazwa")
    if (nip := text(ids, "NIP")) is not None:
        buyer = Buyer("Nip", nip, name)
    elif (vat_ue := text(ids, "NrVatUE")) is not None:
        buyer = Buyer("VatUe", f"{text(ids, 'KodUE') or ''}{vat_ue}", name)
    elif (other := text(ids, "NrID")) is not None:
        buyer = Buyer("Other", other, name)
    else:
        buyer = Buyer("None", None, name)
    p1 = find(root, "Fa", "P_1")
    line = p1.sourceline if p1 is not None else None
    return Facts(seller_nip=required("Podmiot1", "DaneIdentyfikacyjne", "NIP"),
                 issue_date=dt.date.fromisoformat(required("Fa", "P_1")), invoice_number=required("Fa", "P_2"),
                 invoice_type=required("Fa", "RodzajFaktury"), buyer=buyer,
                 gross_total=Decimal(required("Fa", "P_15")), currency=required("Fa", "KodWaluty"),
                 has_attachment=find(root, "Zalacznik") is not None,
                 p1_line=line if isinstance(line, int) else 0)


def _outcome(read: object, root: etree._Element) -> object:
    try:
        return read(root)  # type: ignore[operator]
    except InvoiceRejected as error:
        return (error.code, error.message, error.details)
    except (ValueError, ArithmeticError) as error:   # a bad date or amount in a file the schema refuses
        return (type(error), str(error))


def _documents() -> list[tuple[str, bytes]]:
    found = [(p.name, p.read_bytes()) for p in sorted((SAMPLES / "invoices").glob("*.xml"))]
    found += [(c.case, CONTENT[c.case](c.case)) for c in cases() if c.case in CONTENT]
    # Fa or Podmiot2 without the elements read, in another order, with comments: the edge cases of the walk.
    plain = found[0][1]
    found += [("no-fa-p2", plain.replace(b"<P_2>", b"<!-- x --><X_2>").replace(b"</P_2>", b"</X_2>")),
              ("no-fa", plain.replace(b"<Fa>", b"<Fx>").replace(b"</Fa>", b"</Fx>")),
              ("no-buyer-ids", plain.replace(b"<Podmiot2>", b"<Podmiot9>").replace(b"</Podmiot2>", b"</Podmiot9>")),
              ("empty-nip", plain.replace(b"<NIP>9999999999</NIP>", b"<NIP/>"))]
    return [(name, data) for name, data in found if _parses(data)]   # the others never reach read_facts


def _parses(data: bytes) -> bool:
    try:
        schema.parse(data)
    except InvoiceRejected:
        return False
    return True


DOCUMENTS = _documents()


def test_the_comparison_covers_enough() -> None:
    assert len(DOCUMENTS) >= 45


@pytest.mark.parametrize(("name", "data"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_facts_as_the_former_lookups_read_them(name: str, data: bytes) -> None:
    root = schema.parse(data)
    assert _outcome(read_facts, root) == _outcome(_former, root)
