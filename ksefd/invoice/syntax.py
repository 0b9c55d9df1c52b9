"""Well-formedness errors as sentences an accountant can act on (issue #15 point 5).

libxml2's own text repeats the position ("..., line 47, column 27" after "line 47"), names its internals
("xmlParseEntityRef: no name", "see xmlCtxtSetMaxAmplification", "use XML_PARSE_HUGE option") and says
nothing about the fix. Here each common error gets a plain sentence with the line and column once; the
cleaned parser text stays in the details for whoever debugs the ERP export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from ksefd.i18n import _

# libxml2 xmlParserErrors numbers (include/libxml/xmlerror.h)
_DOCUMENT_EMPTY = 4
_DOCUMENT_END = 5
_INVALID_CHAR_REF = 9
_ENTITYREF_SEMICOL_MISSING = 23
_UNDECLARED_ENTITY = 26
_ATTRIBUTE_NOT_STARTED = 39
_ATTRIBUTE_WITHOUT_VALUE = 41
_ATTRIBUTE_REDEFINED = 42
_COMMENT_NOT_FINISHED = 45
_RESERVED_XML_NAME = 64
_NAME_REQUIRED = 68
_GT_REQUIRED = 73
_TAG_NAME_MISMATCH = 76
_TAG_NOT_FINISHED = 77
_UNDEFINED_NAMESPACE = 201

_POSITION_SUFFIX = re.compile(r"(?:, line \d+, column \d+)+\s*$")
_INTERNALS = re.compile(r"\bxml[A-Z]\w*: |,? ?(?:see|use) (?:xml\w+|XML_PARSE_\w+)(?: option)?\.?")
_MISMATCH = re.compile(r"mismatch: (?P<open>[^\s,]+) line (?P<line>\d+) and (?P<close>[^\s,]+)")
_ENTITY = re.compile(r"Entity '(?P<name>[^']+)' not defined")
_ATTRIBUTE = re.compile(r"Attribute (?P<name>\S+) redefined")
_PREFIX = re.compile(r"Namespace prefix (?P<prefix>\S+) on (?P<name>\S+) is not defined")
_START_TAG = re.compile(r"end of Start Tag (?P<name>\S+)")


@dataclass(frozen=True)
class Explained:
    message: str
    line: int
    column: int
    parser: str   # libxml2's text without positions and internals, for the details


def clean(text: str) -> str:
    """libxml2's text without the appended positions and its internal function and option names."""
    text = _POSITION_SUFFIX.sub("", text.strip())
    return _INTERNALS.sub("", text).strip().rstrip(",").strip()


def explain(error: etree.XMLSyntaxError, data: bytes) -> Explained:
    line, column = error.position
    raw = str(error.msg or "")
    parser = clean(raw)
    at = _("line {line}, column {column}", line=str(line), column=str(column))
    code = int(getattr(error, "code", 0) or 0)   # libxml2 xmlParserErrors; missing from lxml-stubs
    return Explained(_sentence(code, raw, at, line, data), line, column, parser)


def _sentence(code: int, text: str, at: str, line: int, data: bytes) -> str:
    """In the reader's language (issue #14); `parser` in the details keeps libxml2's English."""
    if _truncated(code, text, line, data):
        last = data.count(b"\n") + 1
        return _("The file ends before the XML is complete (at line {line}): it was cut off, or copied before the "
                 "ERP finished writing it.", line=str(last))
    if code == _DOCUMENT_EMPTY:
        return _("There is no XML element where the invoice should start ({at}).", at=at)
    if code == _DOCUMENT_END:
        return _("There is more content after the end of the invoice's root element ({at}): two invoices in one "
                 "file, or leftovers of an earlier file.", at=at)
    if (found := _MISMATCH.search(text)) is not None:
        opened = "" if int(found["line"]) == line else _(" opened at line {line}", line=found["line"])
        return _("The element <{opening}>{opened} is closed with </{closing}> ({at}): the closing tag must have the "
                 "same name.", opening=found["open"], opened=opened, closing=found["close"], at=at)
    if code == _UNDECLARED_ENTITY and (found := _ENTITY.search(text)) is not None:
        return _("Unknown entity &{name}; ({at}): XML knows only &amp; &lt; &gt; &quot; &apos; and numeric ones "
                 "such as &#160;.", name=found["name"], at=at)
    if code == _ENTITYREF_SEMICOL_MISSING or (code == _NAME_REQUIRED and "EntityRef" in text):
        return _("A bare '&' ({at}): in XML text an ampersand must be written as &amp; (e.g. \"A &amp; B\").", at=at)
    if code == _NAME_REQUIRED:
        return _("A '<' that does not start an element ({at}): in XML text a less-than sign must be written as "
                 "&lt;.", at=at)
    if code == _INVALID_CHAR_REF:
        return _("A character reference (&#...;) names a character XML 1.0 does not allow ({at}).", at=at)
    if code in (_ATTRIBUTE_NOT_STARTED, _ATTRIBUTE_WITHOUT_VALUE):
        return _("An attribute value is not in quotes ({at}): write it as name=\"value\".", at=at)
    if code == _ATTRIBUTE_REDEFINED and (found := _ATTRIBUTE.search(text)) is not None:
        return _("The attribute {name} appears twice in one element ({at}).", name=found["name"], at=at)
    if code == _COMMENT_NOT_FINISHED:
        return _("A comment (<!-- ...) is never closed with --> (reported at {at}).", at=at)
    if code == _RESERVED_XML_NAME:
        return _("The XML declaration (<?xml ...?>) must be the very first thing in the file ({at}): remove what "
                 "is before it (an empty line, spaces or another declaration).", at=at)
    if code == _UNDEFINED_NAMESPACE and (found := _PREFIX.search(text)) is not None:
        return _("The element <{prefix}:{name}> uses the prefix {prefix}: without declaring it "
                 "(xmlns:{prefix}=\"...\") ({at}).", prefix=found["prefix"], name=found["name"], at=at)
    if code == _GT_REQUIRED and (found := _START_TAG.search(text)) is not None:
        return _("The start tag <{name} is not closed with '>' ({at}).", name=found["name"], at=at)
    if "depth" in text.lower():
        return _("The XML is nested more than 256 levels deep ({at}); no FA(3) invoice is: the file is damaged or "
                 "is not an invoice.", at=at)
    return _("The XML structure is broken at {at}.", at=at)


def _truncated(code: int, text: str, line: int, data: bytes) -> bool:
    """The parser ran out of data: an error on the last line of a file that does not end with a tag."""
    if code == _TAG_NOT_FINISHED or "Premature end of data" in text:
        return True
    ends_with_tag = data.rstrip().endswith(b">")
    return code in (_GT_REQUIRED, _TAG_NAME_MISMATCH, _DOCUMENT_EMPTY, _NAME_REQUIRED) and not ends_with_tag and \
        line >= data.count(b"\n") + 1 - (1 if data.endswith(b"\n") else 0)
