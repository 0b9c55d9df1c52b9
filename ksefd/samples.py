"""The Ministry's official FA(3) sample invoices (package data) and a maker of unique invoices from
them, for `ksefd demo`, benchmarks and tests.

Several official samples share (seller NIP, RodzajFaktury, P_2) — four are `VAT FV2026/02/150` — so
KSeF would rightly reject the later ones as duplicates (PROTOCOL.md §4.2). `make_invoice` gives each
copy its own number, the NIPs of the companies that exchange it and an issue date, by editing only
those element texts, so the rest of the document stays byte-for-byte the Ministry's.
"""

from __future__ import annotations

import datetime as dt
import re
from importlib.resources import files
from xml.sax.saxutils import escape

_SAMPLES = files("ksefd").joinpath("data/samples")


def sample_names() -> list[str]:
    return sorted(p.name for p in _SAMPLES.iterdir() if p.name.endswith(".xml"))


def sample_bytes(name: str) -> bytes:
    return _SAMPLES.joinpath(name).read_bytes()


def has_attachment(template: bytes) -> bool:
    return b"<Zalacznik>" in template


def _replace_in(block: bytes, tag: bytes, text: str, data: bytes) -> bytes:
    """Replace the first <tag>…</tag> inside the first <block>…</block> of `data`."""
    start = data.find(b"<" + block + b">")
    end = data.find(b"</" + block + b">", start)
    if start < 0 or end < 0:
        return data
    inner = re.sub(rb"<" + tag + rb">[^<]*</" + tag + rb">",
                   b"<" + tag + b">" + escape(text).encode() + b"</" + tag + b">", data[start:end], count=1)
    return data[:start] + inner + data[end:]


def make_invoice(template: bytes, *, number: str, seller_nip: str | None = None, buyer_nip: str | None = None,
                 issue_date: dt.date | None = None) -> bytes:
    """A copy of `template` with P_2 = `number` and, when given, Podmiot1/Podmiot2 NIP and P_1."""
    data = _replace_in(b"Fa", b"P_2", number, template)
    if seller_nip is not None:
        data = _replace_in(b"Podmiot1", b"NIP", seller_nip, data)
    if buyer_nip is not None:
        data = _replace_in(b"Podmiot2", b"NIP", buyer_nip, data)
    if issue_date is not None:
        data = _replace_in(b"Fa", b"P_1", issue_date.isoformat(), data)
    return data
