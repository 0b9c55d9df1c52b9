"""An export's `_metadata.json` (PROTOCOL.md §6.3: {"invoices": [InvoiceMetadata, ...]}) split into its entries
while it is read, a piece at a time, each entry written to a spill file as it is found (issue #16 goal 2).

Read whole, the listing of a 10 000-invoice package is 20-30 MB of bytes at once, the largest single piece
of a backfill's peak memory. Here memory holds one piece (1 MB) and the entry being read.

How an entry's end is found without a streaming JSON parser: an entry of the array ends at a `}` followed
(after whitespace) by `,` or `]`. Such a candidate can also be a `}` inside a string or closing an object
nested in the entry; then the bytes from the entry's start to the candidate are not one complete JSON value
(a string or an object is still open), the decoder refuses them and the next candidate is tried. The first
candidate the decoder accepts is the entry's true end: the text before it parses exactly as in the whole
document, and an object that closes there is the entry itself. Every entry is therefore checked as strict
JSON (an object with a valid ksefNumber), and what follows the array must close the document.

A listing laid out otherwise (another key before `invoices`) returns None: the caller reads it whole.
"""

from __future__ import annotations

import array
import re
from typing import IO, Any

import msgspec

from .errors import ProtocolError
from .receiving import check_ksef_number

PIECE = 1 << 20
OPENING_BYTES = 256
_START = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"invoices"[ \t\r\n]*:[ \t\r\n]*\[[ \t\r\n]*')
_CANDIDATE = re.compile(rb"\}[ \t\r\n]*([,\]])[ \t\r\n]*")


class _Named(msgspec.Struct):
    ksefNumber: Any = None


def spill_entries(stream: IO[bytes], sink: IO[bytes], limit: int, name: str
                  ) -> tuple[array.array[int], list[str]] | None:
    """Copy every entry of the listing in `stream` to `sink`: (start, size of entry i at 2i, 2i + 1; the
    checked KSeF numbers in order), or None when the listing does not start with its invoices array."""
    buffer = stream.read(PIECE)
    while len(buffer) < OPENING_BYTES and (more := stream.read(PIECE)):     # the opening, whole
        buffer += more
    total = len(buffer)
    opening = _START.match(buffer)
    if opening is None:
        return None
    spans: array.array[int] = array.array("q")
    numbers: list[str] = []
    position = search = opening.end()
    offset, closed = 0, buffer[position:position + 1] == b"]"
    if closed:
        position += 1
    while not closed:
        found = _CANDIDATE.search(buffer, search)
        if found is None:
            more = stream.read(PIECE)
            total += len(more)
            if total > limit:
                raise ProtocolError(f"export archive member {name!r} is larger than {limit} bytes")
            if not more:
                raise ProtocolError(f"the export's {name} is not valid JSON: its invoices list never ends")
            buffer, search, position = buffer[position:] + more, search - position, 0
            continue
        entry = buffer[position:found.start() + 1]
        try:
            number = msgspec.json.decode(entry, type=_Named).ksefNumber
        except msgspec.DecodeError:
            search = found.start() + 1          # a `}` inside a string or a nested object: not the end yet
            continue
        numbers.append(check_ksef_number(number))
        spans.extend((offset, sink.write(entry)))
        offset += len(entry)
        position = search = found.end()
        closed = found.group(1) == b"]"
    rest = buffer[position:] + stream.read(limit + 1 - total)
    try:                                   # what follows the array must close the document
        msgspec.json.decode(b'{"invoices":[]' + rest)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"the export's {name} is not valid JSON after its invoices list: {exc}") from exc
    return spans, numbers
