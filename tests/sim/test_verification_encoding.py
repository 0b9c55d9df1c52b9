"""The discouraged-character check searches the UTF-8 bytes (ksefd/sim/verification.py): it must refuse exactly
the characters the text pattern names, every one of them, wherever it stands, with the same words."""

from __future__ import annotations

from ksefd.sim import verification
from tests.conftest import SAMPLES

SAMPLE = (SAMPLES / "invoices" / "FA_3_Przyklad_8.xml").read_bytes()


def test_byte_pattern_matches_exactly_the_discouraged_characters() -> None:
    text_hits = byte_hits = 0
    for point in range(0x110000):
        if 0xD800 <= point <= 0xDFFF:
            continue
        char = chr(point)
        in_text = verification._DISCOURAGED.search(char) is not None
        encoded = ("żx" + char + "ą").encode()
        in_bytes = verification._DISCOURAGED_UTF8.search(encoded) is not None
        if in_text:
            assert any(lead in encoded for lead in verification._DISCOURAGED_LEADS), hex(point)
        assert in_text == in_bytes, hex(point)
        text_hits, byte_hits = text_hits + in_text, byte_hits + in_bytes
    assert text_hits == byte_hits == 6 + 26 + 32 + 32          # U+7F-84, U+86-9F, U+FDD0-FDEF, 16 planes x 2


def test_discouraged_character_still_refused_with_its_line() -> None:
    for char in ("\x7f", "\u0085x\u0086", "\ufdd0", "\U0010ffff"):
        data = SAMPLE.replace(b"Komis ABC", f"Komis{char}ABC".encode())
        checked = verification.check_file(data)
        if char.startswith("\u0085"):      # NEL is allowed; the next one is not
            char = "\u0086"
        assert isinstance(checked, verification.Rejection) and checked.code == 430, char
        line = SAMPLE[:SAMPLE.index(b"Komis ABC")].count(b"\n") + 1
        assert checked.details == [f"Plik faktury zawiera niedozwolony znak U+{ord(char):04X} (linia {line})."]
    assert isinstance(verification.check_file(SAMPLE.replace(b"Komis ABC", "Komis\u0085ABC".encode())),
                      verification.Checked)
