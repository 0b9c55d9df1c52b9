"""The message catalogues (issue #14 point 1): every message id marked `_()` in ksefd has a translation in
both languages with the same placeholders; the .po files compile (pure Python) to what gettext reads."""

from __future__ import annotations

import gettext
import io
import re
import string

import pytest

from ksefd import i18n


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_message_id_has_a_translation_with_the_same_placeholders(language: str) -> None:
    catalogue = i18n.parse_po(i18n.po_path(language).read_text(encoding="utf-8"))
    used = i18n.message_ids()
    assert len(used) > 50
    missing = sorted(m for m in used if not catalogue.get(m))
    assert not missing, f"{language}: no translation for {missing[:5]}"
    for message in used:
        assert _fields(catalogue[message]) == _fields(message), (language, message)
    stale = sorted(m for m in catalogue if m and m not in used)
    assert not stale, f"{language}: entries no code uses any more: {stale[:5]}"


def test_polish_is_polish_and_english_is_the_message_id() -> None:
    polish = i18n.parse_po(i18n.po_path("pl").read_text(encoding="utf-8"))
    english = i18n.parse_po(i18n.po_path("en").read_text(encoding="utf-8"))
    # Untranslated by mistake: the same words in both (placeholders and short tokens such as "pid", "NIP" aside).
    same = [m for m in i18n.message_ids() if polish[m] == m and re.search(r"[a-z]{4,}", re.sub(r"\{\w+\}", "", m))]
    assert same == []
    assert all(english[m] == m for m in i18n.message_ids())
    assert any("ą" in t or "ł" in t for t in polish.values())


def test_the_compiled_catalogue_is_what_gettext_reads() -> None:
    entries = {"": "Content-Type: text/plain; charset=UTF-8\n", "on hold": "wstrzymana", "zażółć": "gęślą jaźń"}
    translations = gettext.GNUTranslations(io.BytesIO(i18n.compile_po(entries)))
    assert translations.gettext("on hold") == "wstrzymana" and translations.gettext("zażółć") == "gęślą jaźń"
    assert translations.gettext("not there") == "not there"


def test_po_parsing_joins_lines_skips_fuzzy_and_unescapes() -> None:
    text = ('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
            '#, fuzzy\nmsgid "a"\nmsgstr "not yet checked"\n\n'
            'msgid "b {x}"\nmsgstr ""\n"cz\\"e" "ść {x}"\n')
    assert i18n.parse_po(text) == {"": "Content-Type: text/plain; charset=UTF-8\n", "b {x}": 'cz"eść {x}'}


def test_the_language_is_chosen_and_restored() -> None:
    before = i18n.current()
    with i18n.using("en"):
        assert i18n._("  ON HOLD since {since}: {reason}", since="1", reason="r") == "  ON HOLD since 1: r"
        with i18n.using("pl"):
            assert i18n._("  ON HOLD since {since}: {reason}", since="1", reason="r") == "  WSTRZYMANA od 1: r"
    assert i18n.current() == before


def test_a_message_defined_twice_is_refused_as_msgfmt_does() -> None:
    text = 'msgid "a"\nmsgstr "x"\n\nmsgid "a"\nmsgstr "y"\n'
    with pytest.raises(ValueError, match="defined twice"):
        i18n.parse_po(text)


def test_counted_nouns_take_the_form_their_number_needs() -> None:
    from ksefd.i18n import counted
    assert [counted(n, "invoice", "pl") for n in (1, 2, 4, 5, 12, 14, 21, 22, 112, 0)] == [
        "1 fakturę", "2 faktury", "4 faktury", "5 faktur", "12 faktur", "14 faktur", "21 faktur", "22 faktury",
        "112 faktur", "0 faktur"]
    assert [counted(n, "day", "pl") for n in (1, 2, 5, 24)] == ["1 dzień", "2 dni", "5 dni", "24 dni"]
    assert [counted(n, "day", "en") for n in (1, 2, 0)] == ["1 day", "2 days", "0 days"]
    assert counted(3, "invoice", "en") == "3 invoices" and counted(1, "invoice", "en") == "1 invoice"
