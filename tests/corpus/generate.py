"""The bad-input corpus (issue #15): what each case of manifest.csv is made of.

Files are made at test time from the official sample (today's issue date, the test company's NIP), so the
repository holds no file git cannot hold (links, FIFOs, sockets, devices, unreadable files, names that are
not UTF-8) and no invoice that goes stale. `make(case, folder, name)` creates the outbox entry `name` for a
case of manifest.csv; `CONTENT` maps the cases that are plain bytes to a function giving them.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import random
import re
import socket
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.daemon.support import OTHER, invoice, today

MANIFEST = Path(__file__).with_name("manifest.csv")
FA3 = b"http://crd.gov.pl/wzor/2025/06/25/13775/"


@dataclass(frozen=True)
class Case:
    case: str        # the generator's name (CONTENT or ENTRIES)
    file: str        # the outbox name ({case}.xml unless the name is the point)
    phase: int       # 1: the first drain; 2: a second drain, after phase 1 was accepted
    outcome: str     # sent | answered (a re-drop: sent/ from its original) | rejected | ignored | stays
    code: str        # error.json's code for rejected / stays; empty otherwise
    what: str


def cases() -> list[Case]:
    with MANIFEST.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if not r["case"].startswith("#")]
    return [Case(r["case"], _unescape(r["file"]) or f"{r['case']}.xml", int(r["phase"] or 1), r["outcome"], r["code"],
                 r["what"]) for r in rows]


def _unescape(name: str) -> str:
    """`\\n` in the manifest is a new line, `\\xff` the byte 0xFF of a name that is not UTF-8 (as Python
    decodes it: os.fsdecode)."""
    return name.replace("\\n", "\n").replace("\\xff", os.fsdecode(b"\xff"))


def good(tag: str) -> bytes:
    return invoice(f"CORPUS/{tag}")


def _replace(tag: str, old: bytes, new: bytes) -> bytes:
    data = good(tag)
    assert old in data, old
    return data.replace(old, new, 1)


def _text(tag: str, text: bytes) -> bytes:
    """`text` put into P_1M (the place of issue, a free text field)."""
    return _replace(tag, b"<P_1M>Warszawa</P_1M>", b"<P_1M>" + text + b"</P_1M>")


def _utf16(tag: str, codec: str) -> bytes:
    return good(tag).decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode(codec)


def _declared(tag: str, encoding: str, codec: str) -> bytes:
    text = _text(tag, "Łódź Świętochłowice".encode()).decode()
    return text.replace('encoding="UTF-8"', f'encoding="{encoding}"').encode(codec)


def _nested(depth: int) -> bytes:
    return b"<?xml version=\"1.0\"?>" + b"<a>" * depth + b"</a>" * depth


def _zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("FV.xml", data)
    return buffer.getvalue()


def _doctype(tag: str, subset: bytes) -> bytes:
    return _replace(tag, b"?>", b"?>\n<!DOCTYPE Faktura" + subset + b">")


LAUGHS = (b' [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;'
          b'&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]')

CONTENT: dict[str, Callable[[str], bytes]] = {
    # valid invoices (names and placement are the point of these cases)
    "plain": good,
    "no-declaration": lambda t: good(t).split(b"?>", 1)[1].lstrip(),
    "single-quoted-declaration": lambda t: _replace(t, b'version="1.0" encoding="UTF-8"',
                                                    b"version='1.0' encoding='UTF-8'"),
    "crlf-line-ends": lambda t: good(t).replace(b"\n", b"\r\n"),
    "polish-text": lambda t: _text(t, "Zażółć gęślą jaźń".encode()),
    "escaped-ampersand": lambda t: _text(t, b"Kowalski &amp; Syn"),
    "cdata-section": lambda t: _text(t, b"<![CDATA[Warszawa]]>"),
    "comment-inside": lambda t: _replace(t, b"<Naglowek>", b"<!-- export ERP 7.1 --><Naglowek>"),
    "trailing-whitespace": lambda t: good(t) + b"\n\n   \n",
    # encodings and BOMs
    "bom-utf8": lambda t: b"\xef\xbb\xbf" + good(t),
    "utf16-le-bom": lambda t: _utf16(t, "utf-16"),
    "utf16-be-bom": lambda t: b"\xfe\xff" + _utf16(t, "utf-16-be"),
    "utf16-le-no-bom": lambda t: _utf16(t, "utf-16-le"),
    "utf32": lambda t: good(t).decode().encode("utf-32"),
    "windows-1250-declared": lambda t: _declared(t, "windows-1250", "cp1250"),
    "windows-1250-undeclared": lambda t: _declared(t, "UTF-8", "cp1250"),
    "iso-8859-2-declared": lambda t: _declared(t, "ISO-8859-2", "iso8859-2"),
    "utf8-declared-latin2": lambda t: _declared(t, "ISO-8859-2", "utf-8"),
    "invalid-utf8-byte": lambda t: _text(t, b"Warszawa \xff"),
    "overlong-utf8": lambda t: _text(t, b"Warszawa \xc0\xaf"),
    "utf8-surrogate": lambda t: _text(t, b"Warszawa \xed\xa0\x80"),
    # truncation and emptiness
    "truncated-half": lambda t: good(t)[: len(good(t)) // 2],
    "truncated-end": lambda t: good(t).rstrip()[:-3],
    "truncated-mid-character": lambda t: _text(t, "Łódź".encode())[: good(t).index(b"<P_1M>") + 7],
    "empty": lambda t: b"",
    "whitespace-only": lambda t: b"  \n\t\n",
    "declaration-only": lambda t: b'<?xml version="1.0" encoding="UTF-8"?>\n',
    # binary and other formats
    "png": lambda t: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64),
    "pdf": lambda t: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n",
    "zip-of-invoice": lambda t: _zip(good(t)),
    "gzip-of-invoice": lambda t: gzip.compress(good(t), mtime=0),
    "random-bytes": lambda t: random.Random(15).randbytes(4096),
    "nul-bytes": lambda t: bytes(1024),
    "html-error-page": lambda t: b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
                                b"<body><h1>502 Bad Gateway</h1></body></html>",
    "json": lambda t: b'{"invoice": {"number": "FV/1", "net": 100.0}}\n',
    "csv": lambda t: b"number;date;net\nFV/1;2026-01-01;100,00\n",
    # DTDs, entities, XInclude, processing instructions
    "doctype-internal-entity": lambda t: _doctype(t, b' [<!ENTITY miasto "Warszawa">]'),
    "billion-laughs": lambda t: _doctype(t, LAUGHS),
    "external-entity": lambda t: _doctype(t, b' [<!ENTITY xxe SYSTEM "file:///etc/passwd">]'),
    "parameter-entity": lambda t: _doctype(t, b' [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]'),
    "doctype-no-subset": lambda t: _doctype(t, b' SYSTEM "faktura.dtd"'),
    "xinclude": lambda t: _text(t, b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                                   b'href="file:///etc/passwd" parse="text"/>'),
    "stylesheet-pi": lambda t: _replace(t, b"?>", b'?><?xml-stylesheet href="a.xsl"?>'),
    "pi-at-end": lambda t: good(t) + b"<?erp export=done?>",
    "pi-inside": lambda t: _replace(t, b"<Naglowek>", b"<Naglowek><?erp id=7?>"),
    "xml-1.1": lambda t: _replace(t, b'version="1.0"', b'version="1.1"'),
    # characters
    "control-char": lambda t: _text(t, b"Warszawa\x01"),
    "vertical-tab": lambda t: _text(t, b"Warszawa\x0b"),
    "nul-in-text": lambda t: _text(t, b"Warszawa\x00"),
    "char-ref-control": lambda t: _text(t, b"Warszawa&#1;"),
    "noncharacter-fffe": lambda t: _text(t, "Warszawa\ufffe".encode()),
    "discouraged-c1": lambda t: _text(t, "Warszawa\u0086".encode()),
    "discouraged-fdd0": lambda t: _text(t, "Warszawa\ufdd0".encode()),
    # sizes
    "over-1mb": lambda t: _replace(t, b"</Faktura>", b"<!--" + b"x" * 1_100_000 + b"--></Faktura>"),
    "over-3mb": lambda t: _replace(t, b"</Faktura>", b"<!--" + b"x" * 3_200_000 + b"--></Faktura>"),
    "deep-nesting": lambda t: _nested(5000),
    "long-field": lambda t: _text(t, b"W" * 5000),
    # roots and namespaces
    "ubl-invoice": lambda t: (b'<?xml version="1.0" encoding="UTF-8"?><Invoice xmlns="urn:oasis:names:specification:'
                              b'ubl:schema:xsd:Invoice-2"><ID>1</ID></Invoice>'),
    "fa2-namespace": lambda t: good(t).replace(FA3, b"http://crd.gov.pl/wzor/2023/06/29/12648/"),
    "no-namespace": lambda t: re.sub(rb'\sxmlns="' + re.escape(FA3) + rb'"', b"", good(t), count=1),
    "prefixed-namespace": lambda t: _prefixed(t),
    "empty-root": lambda t: b'<?xml version="1.0" encoding="UTF-8"?><Faktura xmlns="' + FA3 + b'"/>',
    # schema (XSD) errors
    "missing-p2": lambda t: _cut(good(t), b"<P_2>", b"</P_2>"),
    "renamed-p2": lambda t: good(t).replace(b"<P_2>", b"<P_2X>", 1).replace(b"</P_2>", b"</P_2X>", 1),
    "bad-date": lambda t: good(t).replace(f"<P_1>{today()}</P_1>".encode(), b"<P_1>2026-13-45</P_1>", 1),
    "bad-amount": lambda t: _replace(t, b"<P_15>2051</P_15>", b"<P_15>2 051,00 zl</P_15>"),
    "unknown-element": lambda t: _replace(t, b"<P_1M>", b"<Uwagi>x</Uwagi><P_1M>"),
    "swapped-order": lambda t: _swap(good(t)),
    # business rules
    "other-seller": lambda t: invoice(f"CORPUS/{t}", seller=OTHER),
    "seller-nip-checksum": lambda t: invoice(f"CORPUS/{t}", seller="1234567890"),
    "future-date": lambda t: invoice(f"CORPUS/{t}", issue_date=today() + dt.timedelta(days=3)),
}


def _cut(data: bytes, start: bytes, end: bytes) -> bytes:
    a = data.index(start)
    return data[:a] + data[data.index(end, a) + len(end):]


def _swap(data: bytes) -> bytes:
    one = data[data.index(b"<P_1>"): data.index(b"</P_1>") + 6]
    two = data[data.index(b"<P_2>"): data.index(b"</P_2>") + 6]
    return data.replace(one, b"\x00", 1).replace(two, one, 1).replace(b"\x00", two, 1)


def _prefixed(tag: str) -> bytes:
    """The same document with the FA(3) namespace bound to a prefix instead of the default namespace."""
    data = re.sub(rb'\sxmlns="' + re.escape(FA3) + rb'"', b' xmlns:fa="' + FA3 + b'"', good(tag), count=1)
    return re.sub(rb"<(/?)(?!\?|!|etd:|xsi:)([A-Za-z_][\w.-]*)", rb"<\1fa:\2", data)


def _slow_writer(path: Path, data: bytes) -> Callable[[], None]:
    """A file the 'ERP' is still writing in place: half now, the rest when the returned function is called."""
    handle = path.open("wb")
    handle.write(data[: len(data) // 2])
    handle.flush()

    def finish() -> None:
        handle.write(data[len(data) // 2:])
        handle.close()
    return finish


def make_entry(case: Case, outbox: Path, elsewhere: Path, sent: Path, rejected: Path,
               finishers: list[Callable[[], None]]) -> None:
    """Create the outbox entry of `case` (bytes through CONTENT, or a special entry)."""
    path = outbox / case.file
    tag = case.case
    if case.case in CONTENT:
        _write(path, CONTENT[case.case](tag))
    elif case.case == "symlink-to-invoice":
        (elsewhere / "linked.xml").write_bytes(good(tag))
        path.symlink_to(elsewhere / "linked.xml")
    elif case.case == "dangling-symlink":
        path.symlink_to(elsewhere / "nothing-here.xml")
    elif case.case == "symlink-to-folder":
        path.symlink_to(elsewhere, target_is_directory=True)
    elif case.case == "hardlink-to-invoice":
        (elsewhere / "hard.xml").write_bytes(good(tag))
        os.link(elsewhere / "hard.xml", path)
    elif case.case == "fifo":
        os.mkfifo(path)
    elif case.case == "folder":
        path.mkdir()
        (path / "inside.xml").write_bytes(good(tag))
    elif case.case == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    elif case.case == "device-file":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    elif case.case == "slow-writer":
        finishers.append(_slow_writer(path, good(tag)))
    elif case.case in ("duplicate-in-drop", "duplicate-in-drop-copy"):
        _write(path, good("duplicate-in-drop"))
    elif case.case == "duplicate-of-sent":
        _write(path, good("plain"))
    elif case.case == "duplicate-number":
        _write(path, _text("plain", b"Krakow"))
    elif case.case == "name-taken-in-sent":
        sent.mkdir(parents=True, exist_ok=True)
        (sent / case.file).write_bytes(b"<an earlier invoice/>")
        (sent / Path(case.file).with_suffix(".ksef.json").name).write_bytes(b"{}")
        _write(path, good(tag))
    elif case.case == "name-taken-in-rejected":
        rejected.mkdir(parents=True, exist_ok=True)
        (rejected / case.file).write_bytes(b"<an earlier rejection/>")
        (rejected / Path(case.file).with_suffix(".error.json").name).write_bytes(b"{}")
        _write(path, good(tag)[:100])
    elif case.case == "unreadable":
        _write(path, good(tag))            # made unreadable by the test (it knows the daemon's user)
    elif case.case.startswith("name-"):
        _write(path, good(tag))
    else:
        raise KeyError(f"no generator for corpus case {case.case!r}")


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(".corpus.tmp")
    temp.write_bytes(data)
    temp.rename(path)
