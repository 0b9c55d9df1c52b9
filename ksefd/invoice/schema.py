"""Parsing and the FA(3) XSD, offline: the schema is package data (`ksefd/data/xsd/FA3`), compiled from
its files on disk so `xsd:include` never reaches the network, from a wheel as well as from a source tree.

Thread safety, by design rather than by luck (issue #15 point 6):
- The schema is compiled once, before any check thread parses: the daemon calls `load_schema()` at
  start-up, and `parse()` itself waits for the compiled schema, so no parse in this module ever runs
  beside the compile. Compiling writes into lxml's main-thread string dictionary, which every other
  thread's dictionary reads through; it is the one libxml2 step here that must not overlap anything.
- The includes are loaded from real file paths, never through an lxml `Resolver`. lxml swaps
  libxml2's process-wide external-entity loader in and out around every parse (`_register_document_loader`
  / `_reset_document_loader`, not atomic): a parse in any thread could restore the default loader in the
  middle of a compile, and the default loader cannot serve a custom URL scheme ("Failed to load the
  document 'ksefd-invoice-xsd:/bazowe/...' for inclusion", in up to a third of fresh processes, see
  benchmarks/schema_race.py). A file path is served the same by either loader, so the swap is harmless.
- lxml parsers must not be used by two threads at once, so each thread gets its own.
- Validation is serialised by a lock: an XMLSchema keeps its error log on the object. Validating a
  typical invoice takes well under a millisecond, so the lock costs little.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from lxml import etree

from ksefd.i18n import _

from . import syntax, xsd_messages
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
_DOCTYPE = re.compile(rb"<!DOCTYPE\s+([^\s\[>]+)")
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY\s")
_COMMENT_OR_CDATA = re.compile(rb"<!--.*?-->|<!\[CDATA\[.*?\]\]>", re.DOTALL)
_NAMESPACE_IN_MESSAGE = re.compile(r"\{[A-Za-z][A-Za-z0-9+.-]*:[^}']*\}")   # {http://...}, not {'VAT', ...}
MAX_XSD_ERRORS = 10


class SchemaUnavailable(RuntimeError):
    """The FA(3) schema shipped with ksefd could not be compiled: the installation is broken."""


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


_schema: etree.XMLSchema | None = None


def load_schema() -> None:
    """Compile the FA(3) schema now. The daemon calls this at start-up, before any check thread runs, so a
    broken installation stops it at once with a clear message instead of at the first invoice."""
    fa3_schema()


def fa3_schema() -> etree.XMLSchema:
    """The compiled FA(3) schema, built once (~20 ms) under the lock that also guards validation."""
    global _schema
    schema = _schema
    if schema is not None:
        return schema
    with _schema_lock:
        if _schema is None:
            _schema = _compile()
        return _schema


def _compile() -> etree.XMLSchema:
    try:
        with _on_disk(files("ksefd").joinpath(_XSD_DIR)) as folder:
            parser = etree.XMLParser(resolve_entities=False, no_network=True)
            document = etree.parse(str(folder / _XSD_MAIN), parser)
            return etree.XMLSchema(document)
    except (OSError, etree.Error) as error:
        raise SchemaUnavailable(
            f"The FA(3) schema shipped with ksefd ({_XSD_DIR}/{_XSD_MAIN}) could not be compiled: {error}. "
            "The installation is damaged: reinstall ksefd.") from error


@contextlib.contextmanager
def _on_disk(folder: Traversable) -> Iterator[pathlib.Path]:
    """The schema folder as a real directory: itself from a source tree or an unpacked wheel, else (a zip
    import) a temporary copy, so libxml2 loads the includes from file paths (see the module docstring)."""
    if isinstance(folder, pathlib.Path):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="ksefd-xsd-") as temporary:
        target = pathlib.Path(temporary)
        _copy_tree(folder, target)
        yield target


def _copy_tree(source: Traversable, target: pathlib.Path) -> None:
    for item in source.iterdir():
        if item.is_dir():
            (target / item.name).mkdir()
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())


def parse(data: bytes) -> etree._Element:
    """Well-formedness (from the bytes, so line numbers are the file's) and no DOCTYPE."""
    fa3_schema()   # never parse beside the compile (module docstring); a no-op once compiled
    _refuse_doctype(data)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as error:
        found = syntax.explain(error, data)
        raise InvoiceRejected(Code.NOT_WELL_FORMED, _("The file is not well-formed XML. {explanation}",
                                                      explanation=found.message),
                              {"line": found.line, "column": found.column, "error": found.parser}) from None
    doctype: str = getattr(root.getroottree().docinfo, "doctype", "")   # missing from lxml-stubs
    if doctype:
        raise _doctype_rejected(doctype, 0)
    return root


def _refuse_doctype(data: bytes) -> None:
    """Before parsing: a DOCTYPE may declare entities (an "entity bomb" expands to gigabytes), so it is refused by
    its own rule (PROTOCOL.md §4.2, no DTD) before libxml2 reads it, not reported as "not well-formed"."""
    if b"<!DOCTYPE" not in data:
        return
    visible = _COMMENT_OR_CDATA.sub(lambda m: b" " * len(m.group()), data)
    match = _DOCTYPE.search(visible)
    if match is not None:
        entities = len(_ENTITY_DECLARATION.findall(visible, match.start()))
        raise _doctype_rejected(match.group(1).decode("utf-8", "replace"), entities,
                                data.count(b"\n", 0, match.start()) + 1)


def _doctype_rejected(name: str, entities: int, line: int = 0) -> InvoiceRejected:
    what = "" if not entities else _(" declaring 1 entity") if entities == 1 else \
        _(" declaring {count} entities", count=str(entities))
    return InvoiceRejected(Code.DOCTYPE, _("The file has a document type declaration (<!DOCTYPE {name} ...>){what}; "
                                           "an FA(3) invoice must not have one (KSeF refuses DTDs: entities could "
                                           "change what it reads).", name=name, what=what),
                           {"doctype": name, "entities": entities, "line": line})


def check_form(root: etree._Element) -> None:
    """The root must be FA(3)'s Faktura: name the version found rather than print a schema error."""
    if root.tag == FA3_ROOT:
        return
    qname = etree.QName(root)
    found = _KNOWN_FORMS.get(qname.namespace or "")
    if found is None and qname.localname == "Faktura" and (qname.namespace or "").startswith("http://crd.gov.pl/"):
        found = "FA (another version)"
    what = _("in the {form} structure", form=found) if found else \
        _("a <{element}> document in namespace \"{namespace}\"", element=qname.localname,
          namespace=qname.namespace or "")
    raise InvoiceRejected(Code.NOT_FA3, _("The file is {what}, not an FA(3) invoice (<Faktura> in namespace "
                                          "\"{namespace}\").", what=what, namespace=FA3_NS),
                          {"root": qname.localname, "namespace": qname.namespace or "", "form": found})


def validate(root: etree._Element) -> None:
    schema = fa3_schema()
    with _schema_lock:
        if schema.validate(root):
            return
        log: Iterable[Any] = schema.error_log   # type: ignore[assignment]  # iterable; stubs disagree
        raw = [(int(e.line), _readable(str(e.message)), str(e.path or "")) for e in list(log)[:MAX_XSD_ERRORS]]
    tree = root.getroottree()
    errors = [(line, xsd_messages.explain(message, _node(tree, path)), message) for line, message, path in raw]
    line, first = errors[0][0], errors[0][1]
    raise InvoiceRejected(Code.XSD, _("The invoice does not match the FA(3) schema: line {line}: {explanation}",
                                      line=str(line), explanation=first),
                          {"line": line, "errors": [f"line {n}: {m}" for n, m, _ in errors],
                           "schemaMessages": [f"line {n}: {m}" for n, _, m in errors]})


def _node(tree: etree._ElementTree, path: str) -> etree._Element | None:
    """The element a schema error is about, from libxml2's path (`/*/*[4]/*[2]`)."""
    try:
        found = tree.xpath(path) if path.startswith("/") else []
    except etree.XPathError:
        return None
    first = found[0] if isinstance(found, list) and found else None
    return first if isinstance(first, etree._Element) else None


def _readable(message: str) -> str:
    """lxml writes `{namespace}Element`; a person needs only the element name."""
    return _NAMESPACE_IN_MESSAGE.sub("", message)
