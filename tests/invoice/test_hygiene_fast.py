"""The quicker character and UTF-16 checks (issue #16) give exactly what the plain ones gave."""

from __future__ import annotations

import random

from ksefd.invoice import hygiene
from tests.conftest import SAMPLES
from tests.corpus.generate import CONTENT, cases

# Every edge of the forbidden and discouraged ranges, allowed neighbours, and astral characters either side.
EDGES = ["\x00", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x0e", "\x1f", " ", "~", "\x7f", "\x84", "\x85", "\x86",
         "\x9f", "\xa0", "ą", "\ufdcf", "\ufdd0", "\ufdef", "\ufdf0", "\ufffd", "\ufffe", "\uffff", "\U00010000",
         "\U0001f600", "\U0001fffe", "\U0001ffff", "\U00020000", "\U0010fffd", "\U0010fffe", "\U0010ffff"]


def _documents() -> list[bytes]:
    found = [p.read_bytes() for p in sorted((SAMPLES / "invoices").glob("*.xml"))]
    return found + [CONTENT[c.case](c.case) for c in cases() if c.case in CONTENT]


def test_first_bad_character_is_the_full_class_search() -> None:
    rng = random.Random(16)
    texts = [d.decode("utf-8", "replace") for d in _documents()]
    texts += ["".join(rng.choice(EDGES + ["a"] * 20) for _ in range(rng.randrange(0, 12))) for _ in range(20_000)]
    found = set()
    for text in texts:
        fast = hygiene._first_bad_character(text)
        full = hygiene._BAD_CHAR.search(text)
        assert (fast and (fast.start(), fast.group())) == (full and (full.start(), full.group())), repr(text)
        found.add(full.group() if full else None)
    assert {None, "\x00", "\ufdd0", "\U0010ffff"} <= found


def _former_utf16_variant(data: bytes) -> str | None:
    head = data[:512]
    printable = sum(1 for b in head if 0x20 <= b < 0x7F or b in b"\t\r\n")
    if len(head) >= 8 and head.count(0) * 3 >= len(head) and (printable + head.count(0)) * 10 >= len(head) * 9:
        return "UTF-16 (little-endian)" if head[1::2].count(0) > head[0::2].count(0) else "UTF-16 (big-endian)"
    return None


def test_utf16_guess_is_unchanged() -> None:
    rng = random.Random(16)
    datas = _documents() + [d.decode("utf-8", "replace").encode(codec)[2:] for d in _documents()[:5]
                            for codec in ("utf-16", "utf-16-le", "utf-16-be")]
    datas += [bytes(rng.choice(b"\x00\x00\x00a<\t\x01\xff") for _ in range(rng.randrange(0, 40)))
              for _ in range(20_000)]
    guesses = set()
    for data in datas:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<"):
            continue   # decided before the guess
        guesses.add(hygiene._utf16_variant(data))
        assert hygiene._utf16_variant(data) == _former_utf16_variant(data), data[:40]
    assert guesses == {None, "UTF-16 (little-endian)", "UTF-16 (big-endian)"}
