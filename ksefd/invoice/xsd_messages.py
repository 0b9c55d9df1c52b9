"""FA(3) schema errors as sentences an accountant can act on (issue #15 point 5).

libxml2 writes schema language ("Element 'P_6': This element is not expected. Expected is ( P_2 )."); this
module names the field with its meaning (fields.py), says where in the invoice it is (the seller, buyer or
invoice line), what was wrong with the value and what form it must take. A message it does not recognise is
passed on with the namespaces removed, so nothing is ever lost.
"""

from __future__ import annotations

import re

from lxml import etree

from ksefd.i18n import N_, _, translate

from .fields import SECTIONS, describe, type_format

_ELEMENT = r"^Element '(?P<el>[^']+)'(?:, attribute '(?P<attr>[^']+)')?: "
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(_ELEMENT + body, re.DOTALL)) for name, body in [
    ("unexpected", r"This element is not expected\. Expected is (?:one of )?\( (?P<expected>.*) \)\.$"),
    ("incomplete", r"Missing child element\(s\)\. Expected is (?:one of )?\( (?P<expected>.*) \)\.$"),
    ("not-allowed", r"This element is not expected\.$"),
    ("type", r"'(?P<value>.*)' is not a valid value of the (?:local )?(?:atomic|list|union) type"
             r"(?: '(?P<type>[^']+)')?\.$"),
    ("enumeration", r"\[facet 'enumeration'\] The value '(?P<value>.*)' is not an element of the set "
                    r"\{(?P<set>.*)\}\.$"),
    ("pattern", r"\[facet 'pattern'\] The value '(?P<value>.*)' is not accepted by the pattern '.*'\.$"),
    ("too-short", r"\[facet '(?:minLength|length)'\] The value has a length of '(?P<length>\d+)'; this (?:underruns|"
                  r"differs from) the allowed (?:minimum )?length of '(?P<limit>\d+)'\.$"),
    ("too-long", r"\[facet 'maxLength'\] The value has a length of '(?P<length>\d+)'; this exceeds the allowed "
                 r"maximum length of '(?P<limit>\d+)'\.$"),
    ("digits", r"\[facet 'totalDigits'\] The value '(?P<value>.*)' has more digits than are allowed "
               r"\('(?P<limit>\d+)'\)\.$"),
    ("decimals", r"\[facet 'fractionDigits'\] The value '(?P<value>.*)' has more fractional digits than are "
                 r"allowed \('(?P<limit>\d+)'\)\.$"),
    ("too-small", r"\[facet '(?:minInclusive|minExclusive)'\] The value '(?P<value>.*)' is less than (?:or equal "
                  r"to )?the minimum value allowed \('(?P<limit>[^']*)'\)\.$"),
    ("too-big", r"\[facet '(?:maxInclusive|maxExclusive)'\] The value '(?P<value>.*)' is greater than (?:or equal "
                r"to )?the maximum value allowed \('(?P<limit>[^']*)'\)\.$"),
    ("attribute-missing", r"The attribute '(?P<missing>[^']+)' is required but missing\.$"),
]]
_LONG_SET = 15   # an enumeration longer than this (currencies, countries) is described, not listed
_CODE_FORMATS = {"KodWaluty": N_("a three-letter ISO 4217 currency code (e.g. PLN, EUR, USD)"),
                 "KodKraju": N_("a two-letter ISO 3166 country code (e.g. PL, DE)"),
                 "KodUE": N_("a two-letter EU country code (e.g. DE, FR; EL for Greece)")}


def explain(message: str, element: etree._Element | None) -> str:
    """One sentence for a schema error; `message` without namespaces, `element` the node it is about."""
    for kind, pattern in _PATTERNS:
        match = pattern.match(message)
        if match is not None:
            return _sentence(kind, match, element)
    return message


def _sentence(kind: str, match: re.Match[str], element: etree._Element | None) -> str:
    """In the reader's language (issue #14); element names, values and limits as found."""
    name = match.group("el")
    attribute = match.groupdict().get("attr")
    where = _where(element, name)
    field = _("attribute {attribute} of {element}", attribute=attribute, element=describe(name)) if attribute \
        else _("field {element}", element=describe(name))
    subject = f"{field}{where}"
    groups = match.groupdict()
    value = groups.get("value") or ""
    if kind == "unexpected":
        expected = _names(groups["expected"])
        if len(expected) == 1:
            wanted = expected[0]
            return _("field {wanted} was expected{where} but {found} was found: {wanted_name} is missing, or {name} is "
                     "in the wrong place or not part of FA(3).", wanted=describe(wanted), where=where,
                     found=describe(name), wanted_name=wanted, name=name)
        return _("{found} was found{where} where one of {expected} was expected: a required field is missing, or "
                 "{name} is in the wrong place or not part of FA(3).", found=describe(name), where=where,
                 expected=_listed(expected), name=name)
    if kind == "incomplete":
        expected = _names(groups["expected"])
        missing = _("field {element} is", element=describe(expected[0])) if len(expected) == 1 else \
            _("one of {expected} is", expected=_listed(expected))
        return _("{element}{where} is incomplete: {missing} missing.", element=describe(name), where=where,
                 missing=missing)
    if kind == "not-allowed":
        return _("{subject} is not allowed here: it is in the wrong place, repeated too often, or not part of "
                 "FA(3).", subject=subject)
    if kind == "type":
        form = type_format(groups.get("type") or "")
        return _("{subject} has the value '{value}', which is not {form}.", subject=subject, value=value,
                 form=form or _("valid for this field"))
    if kind == "enumeration":
        allowed = [item.strip().strip("'") for item in groups["set"].split(",")]
        if name in _CODE_FORMATS and not attribute:
            return _("{subject} has the value '{value}', which is not {form}.", subject=subject, value=value,
                     form=translate(_CODE_FORMATS[name]))
        if len(allowed) > _LONG_SET:
            return _("{subject} has the value '{value}', which is not one of the {count} codes the schema allows "
                     "(e.g. {examples}).", subject=subject, value=value, count=str(len(allowed)),
                     examples=", ".join(allowed[:3]))
        return _("{subject} has the value '{value}'; allowed values: {allowed}.", subject=subject, value=value,
                 allowed=", ".join(allowed))
    if kind == "pattern":
        form = _("a NIP: 10 digits without dashes or spaces") if name == "NIP" and not attribute else \
            _("in the form the schema requires")
        return _("{subject} has the value '{value}', which is not {form}.", subject=subject, value=value, form=form)
    if kind == "too-short":
        if groups["length"] == "0":
            return _("{subject} is empty: fill it in or leave the element out if it is optional.", subject=subject)
        return _("{subject} is too short: {length} characters, at least {limit} required.", subject=subject,
                 length=groups["length"], limit=groups["limit"])
    if kind == "too-long":
        return _("{subject} is too long: {length} characters, at most {limit} allowed.", subject=subject,
                 length=groups["length"], limit=groups["limit"])
    if kind == "digits":
        return _("{subject} has the value '{value}', which has more than {limit} digits.", subject=subject,
                 value=value, limit=groups["limit"])
    if kind == "decimals":
        return _("{subject} has the value '{value}', which has more than {limit} decimal places.", subject=subject,
                 value=value, limit=groups["limit"])
    if kind == "too-small":
        return _("{subject} has the value '{value}', below the smallest allowed value {limit}.", subject=subject,
                 value=value, limit=groups["limit"])
    if kind == "too-big":
        return _("{subject} has the value '{value}', above the largest allowed value {limit}.", subject=subject,
                 value=value, limit=groups["limit"])
    return _("{element}{where}: attribute {missing} is missing.", element=describe(name), where=where,
             missing=groups["missing"])   # attribute-missing


def _names(listed: str) -> list[str]:
    return [item.strip() for item in listed.split(",") if item.strip()]


def _listed(names: list[str]) -> str:
    return ", ".join(describe(n) for n in names)


def _where(element: etree._Element | None, name: str) -> str:
    """` in Podmiot1 (seller / sprzedawca, podatnik)` or ` in invoice line 3 (FaWiersz)`: the nearest section."""
    if element is None:
        return ""
    node = element.getparent() if etree.QName(element).localname == name else element
    while node is not None:
        local = etree.QName(node).localname
        if local in SECTIONS:
            if local == "FaWiersz":
                number = next((c.text for c in node if etree.QName(c).localname == "NrWierszaFa"), None)
                return _(" in invoice line {number} (FaWiersz)", number=number.strip()) if number else \
                    _(" in an invoice line (FaWiersz)")
            return _(" in {section}", section=describe(local))
        node = node.getparent()
    return ""

