"""Parsing and the FA(3) XSD, offline: the schema is package data (`ksefd/data/xsd/FA3`) read through
`importlib.resources` with a resolver, so `xsd:import`/`xsd:include` never reach the network and it
works from a wheel as well as from a source tree.

lxml parsers must not be used by two threads at once, so each thread gets its own. The schema is
compiled once and validation is serialised by a lock: compiling a schema while another thread
validates fails inside libxml2 (seen in tests), and an XMLSchema keeps its error log on the object.
Validation of a typical invoice takes well under a millisecond, so the lock costs little.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from lxml import etree

from .errors import Code, InvoiceRejected

FA3_NS = "http://crd.gov.pl/wzor/2025/06/25/13775/"
FA3_ROOT = f"{{{FA3_NS}}}Faktura"
_KNOWN_FORMS = {   # root namespaces an ERP may still export, to say which version the file is
    "http://crd.gov.pl/wzor/2023/06/29/12648/": "FA(2)",
    "http://crd.gov.pl/wzor/2021/11/29/11089/": "FA(1)",
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2": "PEF (UBL Invoice)",
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2": "PEF_KOR (UBL CreditNote)",
}
_XSD_DIR = "data/xsd/FA3"
_XSD_MAIN = "schemat_FA(3)_v1-0E.xsd"
_SCHEME = "ksefd-invoice-xsd:/"
_NAMESPACE_IN_MESSAGE = re.compile(r"\{[^}]*\}")
MAX_XSD_ERRORS = 10


class _PackageResolver(etree.Resolver):
    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:  # type: ignore[override]
        if system_url and system_url.startswith(_SCHEME):
            relative = system_url[len(_SCHEME):]
            data = files("ksefd").joinpath(_XSD_DIR, *relative.split("/")).read_bytes()
            return self.resolve_string(data, context, base_url=system_url)
        return None


class _PerThread(threading.local):
    parser: etree.XMLParser | None = None


_local = _PerThread()
_schema_lock = threading.Lock()


def _parser() -> etree.XMLParser:
    if _local.parser is None:
        # No entity expansion, no DTD loading, no network: an invoice is untrusted input.
        _local.parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                        huge_tree=False)
    return _local.parser


@functools.cache
def _compiled() -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    parser.resolvers.add(_PackageResolver())
    main = files("ksefd").joinpath(_XSD_DIR, _XSD_MAIN).read_bytes()
    document = etree.fromstring(main, parser, base_url=_SCHEME + _XSD_MAIN)
    return etree.XMLSchema(etree.ElementTree(document))


def fa3_schema() -> etree.XMLSchema:
    """The compiled FA(3) schema, built once (~20 ms). Use it only while holding no other schema work:
    `validate` below serialises access, because libxml2 fails when a schema is compiled or used by
    two threads at once and an XMLSchema keeps its error log on the object."""
    with _schema_lock:
        return _compiled()


def parse(data: bytes) -> etree._Element:
    """Well-formedness (from the bytes, so line numbers are the file's) and no DOCTYPE."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as error:
        line, column = error.position
        raise InvoiceRejected(Code.NOT_WELL_FORMED,
                              f"The file is not well-formed XML: {error.msg} (line {line}, column {column}).",
                              {"line": line, "column": column, "error": error.msg}) from None
    doctype: str = getattr(root.getroottree().docinfo, "doctype", "")   # missing from lxml-stubs
    if doctype:
        raise InvoiceRejected(Code.DOCTYPE, f"The file has a document type declaration ({doctype}); an FA(3) "
                                            "invoice must not have one.", {"doctype": doctype})
    return root


def check_form(root: etree._Element) -> None:
    """The root must be FA(3)'s Faktura: name the version found rather than print a schema error."""
    if root.tag == FA3_ROOT:
        return
    qname = etree.QName(root)
    found = _KNOWN_FORMS.get(qname.namespace or "")
    if found is None and qname.localname == "Faktura" and (qname.namespace or "").startswith("http://crd.gov.pl/"):
        found = "FA (another version)"
    what = f"in the {found} structure" if found else \
        f"a <{qname.localname}> document in namespace \"{qname.namespace or ''}\""
    raise InvoiceRejected(Code.NOT_FA3, f"The file is {what}, not an FA(3) invoice (<Faktura> in namespace "
                                        f"\"{FA3_NS}\").",
                          {"root": qname.localname, "namespace": qname.namespace or "", "form": found})


def validate(root: etree._Element) -> None:
    schema = fa3_schema()
    with _schema_lock:
        if schema.validate(root):
            return
        log: Iterable[Any] = schema.error_log   # type: ignore[assignment]  # iterable; stubs disagree
        errors = [(int(e.line), _readable(str(e.message))) for e in list(log)[:MAX_XSD_ERRORS]]
    line, first = errors[0]
    raise InvoiceRejected(Code.XSD, f"The invoice is not valid against the FA(3) schema: line {line}: {first}",
                          {"line": line, "errors": [f"line {n}: {m}" for n, m in errors]})


def _readable(message: str) -> str:
    """lxml writes `{namespace}Element`; a person needs only the element name."""
    return _NAMESPACE_IN_MESSAGE.sub("", message)
