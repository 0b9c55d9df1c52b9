"""QR code images with a label underneath, as KSeF prescribes for KOD I and KOD II (PROTOCOL.md §8.5-8.6).

segno encodes the symbol (ISO/IEC 18004). The label needs text drawing, which segno does not do; for
the few characters a label holds (KSeF numbers are digits, A-F and '-', plus the words OFFLINE and
CERTYFIKAT) a 5x7 bitmap font is enough, and it spares the daemon a native imaging library. The SVG
uses real text instead.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from xml.sax.saxutils import escape

import segno

BORDER = 4             # the quiet zone ISO/IEC 18004 requires, in modules
MIN_SCALE = 5          # pixels per module: small codes on print are not scanned reliably
ERROR_LEVEL = "m"

# 5x7 glyphs, rows top to bottom, '#' is ink. Covers what labels hold.
_FONT_ROWS = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.", "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####", "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.", "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.", "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.", "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#", "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.", "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####", "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####", "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#", "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#", "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.", "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#", "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.", "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.", "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.", "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..", "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "-": "..... ..... ..... ##### ..... ..... .....", " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..", "/": "..... ....# ...#. ..#.. .#... #.... .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
}
FONT: dict[str, list[str]] = {char: rows.split() for char, rows in _FONT_ROWS.items()}
GLYPH_W, GLYPH_H, GLYPH_GAP = 5, 7, 1
_SVG_OPEN_RE = re.compile(r"^<svg[^>]*>")


def _symbol(link: str) -> segno.QRCode:
    if not link:
        raise ValueError("a QR code needs a link to encode")
    return segno.make_qr(link, error=ERROR_LEVEL)


def _check_scale(scale: int) -> None:
    if scale < MIN_SCALE:
        raise ValueError(f"scale {scale} is below {MIN_SCALE} pixels per module; codes that small do not scan")


def _label_glyphs(label: str) -> list[list[str]]:
    missing = sorted({c for c in label.upper() if c not in FONT})
    if missing:
        raise ValueError(f"label {label!r} has characters the PNG font lacks: {''.join(missing)!r}; "
                         "KSeF labels are a KSeF number, OFFLINE or CERTYFIKAT")
    return [FONT[c] for c in label.upper()]


def _text_bitmap(label: str, pixel: int) -> list[bytearray]:
    """Label rows, 0 = ink and 255 = paper, `pixel` device pixels per font pixel."""
    glyphs = _label_glyphs(label)
    width = max(0, (len(glyphs) * (GLYPH_W + GLYPH_GAP) - GLYPH_GAP) * pixel)
    rows: list[bytearray] = []
    for y in range(GLYPH_H):
        row = bytearray(b"\xff" * width)
        for index, glyph in enumerate(glyphs):
            for x, cell in enumerate(glyph[y]):
                if cell == "#":
                    start = (index * (GLYPH_W + GLYPH_GAP) + x) * pixel
                    row[start:start + pixel] = b"\x00" * pixel
        rows.extend(bytearray(row) for _ in range(pixel))
    return rows


def _png(rows: list[bytearray], width: int) -> bytes:
    """An 8-bit greyscale PNG (RFC 2083), each row with filter type 0."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    header = struct.pack(">IIBBBBB", width, len(rows), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def render_png(link: str, label: str, scale: int = MIN_SCALE) -> bytes:
    _check_scale(scale)
    symbol = _symbol(link)
    code_rows = [bytearray(0 if dark else 255 for dark in row for _ in range(scale))
                 for row in symbol.matrix_iter(scale=1, border=BORDER) for _ in range(scale)]
    code_width = len(code_rows[0])
    # The label is as large as fits under the code, between 2 and `scale` device pixels per font pixel.
    pixel = max(2, min(scale, code_width // max(1, len(label) * (GLYPH_W + GLYPH_GAP))))
    text = _text_bitmap(label, pixel)
    text_width = len(text[0]) if text else 0
    width = max(code_width, text_width + 2 * BORDER * pixel)

    def centred(row: bytearray) -> bytearray:
        left = (width - len(row)) // 2
        return bytearray(b"\xff" * left) + row + bytearray(b"\xff" * (width - left - len(row)))

    rows = [centred(r) for r in code_rows]
    rows += [centred(r) for r in text]
    rows += [bytearray(b"\xff" * width) for _ in range(BORDER * scale)]     # quiet zone under the label
    return _png(rows, width)


def render_svg(link: str, label: str, scale: int = MIN_SCALE) -> str:
    _check_scale(scale)
    symbol = _symbol(link)
    buffer = io.BytesIO()
    symbol.save(buffer, kind="svg", scale=scale, border=BORDER, xmldecl=False, nl=False)
    drawn = buffer.getvalue().decode("utf-8")
    inner = _SVG_OPEN_RE.sub("", drawn, count=1).removesuffix("</svg>")
    size = symbol.symbol_size(scale=scale, border=BORDER)[0]
    # A monospace glyph is about 0.6 em wide: shrink long labels (KSeF numbers) to the code's width.
    font_size = round(min(3 * scale, (size - 2 * scale) / (0.6 * max(1, len(label)))), 1)
    height = size + 3 * scale + 2 * scale
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{height:g}" '
            f'viewBox="0 0 {size} {height:g}">'
            f'<rect width="{size}" height="{height:g}" fill="#fff"/>{inner}'
            f'<text x="{size / 2:g}" y="{size + 3 * scale * 0.8:g}" text-anchor="middle" '
            f'font-family="DejaVu Sans Mono, Consolas, monospace" font-size="{font_size:g}" '
            f'fill="#000">{escape(label)}</text></svg>')
