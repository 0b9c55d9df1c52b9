"""The language people read (issue #14 point 1): Polish by default, English with `language = "en"` in the
config's [daemon] section.

Standard gettext: the message ids are the English texts, marked `_("...")` in the code, with `{name}`
placeholders filled by `str.format` after translation; the catalogues are ordinary .po files in
ksefd/locale/<lang>/LC_MESSAGES/ksefd.po, which translators edit with the usual tools. They are compiled at
import by `compile_po` below (the .mo format of GNU gettext, written in pure Python, as CPython's
Tools/i18n/msgfmt.py does), so neither the build nor CI needs the gettext command-line tools.

Codes (hold codes, error codes, states) stay English and stable; JSON logs stay English.
"""

from __future__ import annotations

import ast
import contextlib
import gettext
import io
import os
import struct
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

Language = Literal["pl", "en"]
LANGUAGES: tuple[Language, ...] = ("pl", "en")
DEFAULT: Language = "pl"
DOMAIN = "ksefd"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"

_current: Language = DEFAULT


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def parse_po(text: str) -> dict[str, str]:
    """msgid -> msgstr of a .po file (no plurals or contexts: ksefd's messages use neither); the header
    entry (msgid "") included, as msgfmt keeps it; fuzzy entries left out, as msgfmt does."""
    entries: dict[str, str] = {}
    msgid: list[str] | None = None
    msgstr: list[str] | None = None
    current: list[str] | None = None
    fuzzy = pending_fuzzy = False

    def flush() -> None:
        if msgid is not None and msgstr is not None and not fuzzy:
            key = "".join(msgid)
            if key in entries:
                # msgfmt refuses a duplicate message definition too; the catalogues are merged with git's
                # union driver (.gitattributes), so a message added on two branches would show up here.
                raise ValueError(f"message defined twice: {key!r}")
            entries[key] = "".join(msgstr)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#,") and "fuzzy" in line:
            pending_fuzzy = True
        if not line or line.startswith("#"):
            continue
        if line.startswith("msgid "):
            flush()
            msgid, msgstr, fuzzy, pending_fuzzy = [], None, pending_fuzzy, False
            current, line = msgid, line[6:]
        elif line.startswith("msgstr "):
            msgstr = []
            current, line = msgstr, line[7:]
        if current is None or not line.startswith('"'):
            raise ValueError(f"line {number}: not a .po line: {raw!r}")
        current.append(ast.literal_eval(line))
    flush()
    return entries


def compile_po(entries: dict[str, str]) -> bytes:
    """The GNU .mo file for `entries` (little-endian, no hash table: allowed by the format)."""
    keys = sorted(entries)
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    header_size = 7 * 4
    table = header_size + 2 * 8 * len(keys)
    offsets: list[int] = []
    data = b""
    for blob in ids + strs:
        offsets += [len(blob), table + len(data)]
        data += blob + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, len(keys), header_size, header_size + 8 * len(keys), 0, 0)
    return out + struct.pack(f"<{len(offsets)}I", *offsets) + data


@cache
def translations(language: str) -> gettext.NullTranslations:
    path = po_path(language)
    if not path.exists():
        return gettext.NullTranslations()
    return gettext.GNUTranslations(io.BytesIO(compile_po(parse_po(path.read_text(encoding="utf-8")))))


def use(language: str) -> None:
    """Choose the language of every `_()` from now on (the CLI does, once the config is read)."""
    global _current
    _current = "en" if language == "en" else DEFAULT


@contextlib.contextmanager
def using(language: str) -> Iterator[None]:
    """`with using("en"): ...`: another language for a while (a status rendered for its config)."""
    before = _current
    use(language)
    try:
        yield
    finally:
        use(before)


def from_environment(environ: dict[str, str] | None = None) -> Language:
    """The language before any config is read (`ksefd --help`, commands without a config): KSEFD_LANGUAGE if
    set, else the locale (LC_ALL, LC_MESSAGES, LANG: the first one set, as POSIX orders them) English when it
    starts with "en", else Polish, the default."""
    env = os.environ if environ is None else environ
    for key in ("KSEFD_LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(key, "").strip().lower()
        if value:
            return "en" if value.startswith("en") else DEFAULT
    return DEFAULT


def current() -> Language:
    return _current


def message_ids(root: Path | None = None) -> dict[str, str]:
    """Every `_("...")` in ksefd's code (the catalogues' message ids) -> where it is first used; what
    xgettext would extract, for translators and for the test that both catalogues are complete."""
    root = root or Path(__file__).resolve().parent
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "N_") \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.setdefault(node.args[0].value, f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def N_(message: str) -> str:
    """Marks a message id kept in a table and translated where it is shown (`translate`)."""
    return message


def translate(message: str, language: str | None = None) -> str:
    """`message` (a message id, no placeholders) in `language` (default: the current one)."""
    return translations(language or _current).gettext(message)


def _(message: str, /, **values: Any) -> str:
    """`message` in the current language, with `{name}` placeholders filled from `values`."""
    text = translations(_current).gettext(message)
    return text.format(**values) if values else text


# Counted nouns: Polish has three forms (1 dzień / 2-4 dni / 5+ dni; 1 fakturę / 2-4 faktury / 5+ faktur, and 12-14
# as 5+), English two; the catalogues carry no plural forms (see parse_po), so the few nouns ksefd counts in a
# sentence live here, in the case their sentences need (Polish accusative: "wrzucono 1 fakturę", "za 1 dzień").
_COUNTED: dict[str, dict[str, tuple[str, str, str]]] = {
    "day": {"en": ("{n} day", "{n} days", "{n} days"), "pl": ("{n} dzień", "{n} dni", "{n} dni")},
    "invoice": {"en": ("{n} invoice", "{n} invoices", "{n} invoices"),
                "pl": ("{n} fakturę", "{n} faktury", "{n} faktur")},
}


def counted(n: int, noun: str, language: str | None = None) -> str:
    """`n` and the noun in the form that number needs, e.g. counted(22, "invoice") -> "22 faktury"."""
    language = language or _current
    forms = _COUNTED[noun]["en" if language == "en" else "pl"]
    if n == 1:
        return forms[0].format(n=n)
    few = language != "en" and n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14)
    return (forms[1] if few else forms[2]).format(n=n)


# A text kept as message ids with their values, so that it can be put into words later, in any language: a
# client error (ksefd.ksef.texts) whose `str` stays English for the logs, a hold reason stored for `ksefd status`
# (ksefd.daemon.words). A value is a plain string (KSeF's or the system's own words, a NIP, a path: never
# translated) or nested words (a part of the sentence that is itself a message id, translated too).
Part = tuple[str, Mapping[str, Union[str, "Words"]]]
Words = tuple[Part, ...]


def say(message: str, /, **values: str | Words) -> Words:
    """One message id (English, marked with N_ where it is written) and its values."""
    return ((message, values),)


def render(words: Words, language: str | None = None) -> str:
    """The parts in `language` (default: the current one), joined by a space."""
    out = []
    for message, values in words:
        filled = {k: v if isinstance(v, str) else render(v, language) for k, v in values.items()}
        text = translate(message, language)
        out.append(text.format(**filled) if filled else text)
    return " ".join(out)
