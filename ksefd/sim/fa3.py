"""The FA(3) invoice schema (package data `ksefd/data/xsd/FA3`) and the facts the simulator reads
from a valid invoice: seller, buyer, P_1, P_2, RodzajFaktury, amounts, currency, attachment.

The XSD is compiled offline from its package files on disk (a temporary copy when ksefd is imported
from a zip), so `xsd:include` is loaded by libxml2 from file paths: never through an lxml Resolver,
because lxml swaps libxml2's process-wide entity loader around every parse in any thread, and a compile
that meets a swapped-back default loader cannot load a custom URL scheme (issue #15 point 6). The app
compiles it when it is built (`create_app`), before it serves a request.

`facts(root)` expects a document already valid against the schema (verification.py runs the XSD first)
and returns plain JSON-able values.
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
import threading
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, cast

from lxml import etree

NS = "http://crd.gov.pl/wzor/2025/06/25/13775/"
XSD_DIR = "data/xsd/FA3"
XSD_MAIN = "schemat_FA(3)_v1-0E.xsd"

# formCode of the session -> the logical structure the UPO names (PROTOCOL.md §4.6).
STRUCTURE_NAME = "Schemat_FA(3)_v1-0E.xsd"
SYSTEM_CODE = "FA (3)"

# RodzajFaktury -> InvoiceMetadata.invoiceType (openapi.json InvoiceType).
INVOICE_TYPES = {"VAT": "Vat", "ZAL": "Zal", "KOR": "Kor", "ROZ": "Roz", "UPR": "Upr",
                 "KOR_ZAL": "KorZal", "KOR_ROZ": "KorRoz"}

_NET_FIELDS = ("P_13_1", "P_13_2", "P_13_3", "P_13_4", "P_13_5", "P_13_6_1", "P_13_6_2", "P_13_6_3",
               "P_13_7", "P_13_8", "P_13_9", "P_13_10", "P_13_11")
_VAT_FIELDS = ("P_14_1", "P_14_2", "P_14_3", "P_14_4", "P_14_5")


_lock = threading.Lock()
_compiled: etree.XMLSchema | None = None


def schema() -> etree.XMLSchema:
    """The compiled FA(3) schema, built once under the lock that also serialises validation."""
    global _compiled
    if _compiled is not None:
        return _compiled
    with _lock:
        if _compiled is None:
            with _on_disk(files("ksefd").joinpath(XSD_DIR)) as folder:
                parser = etree.XMLParser(resolve_entities=False, no_network=True)
                _compiled = etree.XMLSchema(etree.parse(str(folder / XSD_MAIN), parser))
        return _compiled


@contextlib.contextmanager
def _on_disk(folder: Traversable) -> Iterator[pathlib.Path]:
    if isinstance(folder, pathlib.Path):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="ksefd-sim-xsd-") as temporary:
        _copy_tree(folder, pathlib.Path(temporary))
        yield pathlib.Path(temporary)


def _copy_tree(source: Traversable, target: pathlib.Path) -> None:
    for item in source.iterdir():
        if item.is_dir():
            (target / item.name).mkdir()
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())


def validation_errors(root: etree._Element, limit: int = 5) -> list[str]:
    """XSD errors as `line N: message`, at most `limit` of them; empty when the document is valid."""
    xsd = schema()
    with _lock:   # XMLSchema keeps its error_log on the object: validate one document at a time
        if xsd.validate(root):
            return []
        errors = list(cast(Iterable[Any], xsd.error_log))[:limit]   # lxml-stubs omit __iter__
    return [f"Linia {e.line}: {e.message}" for e in errors]


# facts ---------------------------------------------------------------------------------------

def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _text(node: etree._Element | None, *path: str) -> str | None:
    for name in path:
        if node is None:
            return None
        node = node.find(_q(name))
    if node is None or node.text is None:
        return None
    return node.text.strip()


def _amount(fa: etree._Element, names: tuple[str, ...], pln_suffix: str = "") -> float:
    total = Decimal(0)
    for name in names:
        value = _text(fa, name + pln_suffix) if pln_suffix else None
        value = value if value is not None else _text(fa, name)
        if value:
            try:
                total += Decimal(value)
            except InvalidOperation:
                continue
    return float(total)


def _identifier(ids: etree._Element | None, *, internal_id: bool = False) -> dict[str, Any]:
    """InvoiceMetadata's identifier of a subject's DaneIdentyfikacyjne: NIP, IDWew (Podmiot3 only), NrVatUE
    with its KodUE, NrID, or None."""
    if (nip := _text(ids, "NIP")) is not None:
        return {"type": "Nip", "value": nip}
    if internal_id and (internal := _text(ids, "IDWew")) is not None:
        return {"type": "InternalId", "value": internal}
    if (vat_ue := _text(ids, "NrVatUE")) is not None:
        return {"type": "VatUe", "value": f"{_text(ids, 'KodUE') or ''}{vat_ue}"}
    if (other := _text(ids, "NrID")) is not None:
        return {"type": "Other", "value": other}
    return {"type": "None"}


def _buyer(podmiot2: etree._Element | None) -> dict[str, Any]:
    ids = podmiot2.find(_q("DaneIdentyfikacyjne")) if podmiot2 is not None else None
    return {"identifier": _identifier(ids), "name": _text(ids, "Nazwa")}


def _third_subjects(root: etree._Element) -> list[dict[str, Any]]:
    subjects = []
    for node in root.findall(_q("Podmiot3")):
        ids = node.find(_q("DaneIdentyfikacyjne"))
        role = _text(node, "Rola")
        subjects.append({"identifier": _identifier(ids, internal_id=True), "name": _text(ids, "Nazwa"),
                         "role": int(role) if role and role.isdigit() else 0})
    return subjects


def _authorized_subject(root: etree._Element) -> dict[str, Any] | None:
    node = root.find(_q("PodmiotUpowazniony"))
    if node is None:
        return None
    role = _text(node, "RolaPU")
    return {"nip": _text(node, "DaneIdentyfikacyjne", "NIP"), "name": _text(node, "DaneIdentyfikacyjne", "Nazwa"),
            "role": int(role) if role and role.isdigit() else 0}


def facts(root: etree._Element) -> dict[str, Any]:
    """What KSeF reads from a schema-valid FA(3) document (InvoiceMetadata, UPO, duplicate key)."""
    fa = root.find(_q("Fa"))
    assert fa is not None, "facts() needs a schema-valid FA(3) document"
    currency = _text(fa, "KodWaluty") or "PLN"
    rodzaj = _text(fa, "RodzajFaktury") or ""
    return {
        "sellerNip": _text(root, "Podmiot1", "DaneIdentyfikacyjne", "NIP"),
        "sellerName": _text(root, "Podmiot1", "DaneIdentyfikacyjne", "Nazwa"),
        "buyer": _buyer(root.find(_q("Podmiot2"))),
        "thirdSubjects": _third_subjects(root),
        "authorizedSubject": _authorized_subject(root),
        "issueDate": _text(fa, "P_1"),
        "invoiceNumber": _text(fa, "P_2"),
        "rodzajFaktury": rodzaj,
        "invoiceType": INVOICE_TYPES.get(rodzaj, "Vat"),
        "currency": currency,
        "netAmount": _amount(fa, _NET_FIELDS),
        "grossAmount": _amount(fa, ("P_15",)),
        # InvoiceMetadata.vatAmount is in PLN: P_14_xW carries the PLN value of a foreign-currency VAT.
        "vatAmount": _amount(fa, _VAT_FIELDS, "W" if currency != "PLN" else ""),
        "isSelfInvoicing": _text(fa, "Adnotacje", "P_17") == "1",
        "hasAttachment": root.find(_q("Zalacznik")) is not None,
        "formCode": {"systemCode": SYSTEM_CODE, "schemaVersion": "1-0E", "value": "FA"},
    }


def subject_nips(root: etree._Element) -> list[tuple[str, str]]:
    """(where, NIP) of every subject whose NIP KSeF checksums under `subject-identifier-validation`
    (PROTOCOL.md §14.3): Podmiot1/2/3, PodmiotUpowazniony and the NIP inside a Podmiot3 IDWew."""
    found: list[tuple[str, str]] = []
    for where in ("Podmiot1", "Podmiot2", "PodmiotUpowazniony"):
        for node in root.findall(_q(where)):
            if (nip := _text(node, "DaneIdentyfikacyjne", "NIP")) is not None:
                found.append((f"{where}/DaneIdentyfikacyjne/NIP", nip))
    for i, node in enumerate(root.findall(_q("Podmiot3")), start=1):
        if (nip := _text(node, "DaneIdentyfikacyjne", "NIP")) is not None:
            found.append((f"Podmiot3[{i}]/DaneIdentyfikacyjne/NIP", nip))
        if (internal := _text(node, "DaneIdentyfikacyjne", "IDWew")) is not None:
            found.append((f"Podmiot3[{i}]/DaneIdentyfikacyjne/IDWew", internal.split("-")[0]))
    return found


def nip_checksum_ok(nip: str) -> bool:
    """NIP check digit: weights 6,5,7,2,3,4,5,6,7, sum mod 11 equals the 10th digit (10 never valid)."""
    if len(nip) != 10 or not nip.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(nip[:9], (6, 5, 7, 2, 3, 4, 5, 6, 7), strict=True)) % 11
    return total != 10 and total == int(nip[9])
