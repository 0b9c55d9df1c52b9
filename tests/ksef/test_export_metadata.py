"""Issue #16 goal 2: an export's _metadata.json is split into its entries while it is read (export_metadata.py),
exactly as a whole-document JSON parse would split it, whatever the entries hold, with one piece in memory."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ksefd.ksef import ProtocolError, export_metadata
from ksefd.ksef.export_metadata import spill_entries
from ksefd.ksef.export_package import read_metadata_index

NUMBERS = [f"5265877635-20260101-{i:012X}-{i % 100:02d}" for i in range(1, 6)]
TRICKY = ['a},{"b"', "x}]y", '}, {', "\\\"}", "ł}\n,"]


def entries() -> list[dict[str, Any]]:
    """Entries whose strings hold `},{` and `}]`, with nested arrays of objects (candidate ends inside)."""
    return [{"ksefNumber": n, "note": t, "thirdSubjects": [{"id": i}, {"id": [{"x": "}"}]}], "n": i}
            for i, (n, t) in enumerate(zip(NUMBERS, TRICKY, strict=True))]


def split(document: bytes, piece: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[str]] | None:
    monkeypatch.setattr(export_metadata, "PIECE", piece)
    sink = io.BytesIO()
    found = spill_entries(io.BytesIO(document), sink, 10_000_000, "_metadata.json")
    if found is None:
        return None
    spans, numbers = found
    data = sink.getvalue()
    return [json.loads(data[spans[2 * i]:spans[2 * i] + spans[2 * i + 1]]) for i in range(len(numbers))], numbers


@pytest.mark.parametrize("piece", [7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_entries_split_as_a_json_parser_would(piece: int, indent: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = entries()
    document = json.dumps({"invoices": listing}, indent=indent, ensure_ascii=False).encode()
    assert split(document, piece, monkeypatch) == (listing, NUMBERS)


def test_an_empty_listing_and_keys_after_the_array(monkeypatch: pytest.MonkeyPatch) -> None:
    assert split(b'{"invoices": [ ] }', 4, monkeypatch) == ([], [])
    document = json.dumps({"invoices": entries()[:2], "isTruncated": True, "more": {"a": [1]}}).encode()
    assert split(document, 16, monkeypatch) == (entries()[:2], NUMBERS[:2])


def test_another_layout_is_left_to_the_whole_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    document = json.dumps({"count": 5, "invoices": entries()}).encode()
    assert split(document, 64, monkeypatch) is None
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w") as package:
        package.writestr("_metadata.json", document)
    index = read_metadata_index(archive, "Zip")
    try:
        assert index.numbers == NUMBERS and index.all() == entries()
    finally:
        index.close()


@pytest.mark.parametrize("document", [
    b'{"invoices": [{"ksefNumber": "5265877635-20260101-000000000001-01"}, {"ksefNumber": "5265877635-2026',
    b'{"invoices": [{"ksefNumber": "5265877635-20260101-000000000001-01", "a": tru}]}',
    b'{"invoices": [{"ksefNumber": "5265877635-20260101-000000000001-01"}] ',
    b'{"invoices": [{"ksefNumber": "5265877635-20260101-000000000001-01"}]} trailing',
    b'{"invoices": [{"ksefNumber": "../../etc/passwd"}]}',
])
def test_broken_listings_are_refused(document: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProtocolError):
        split(document, 16, monkeypatch)
