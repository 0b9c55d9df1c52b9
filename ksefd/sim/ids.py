"""Reference numbers and KSeF numbers with their CRC-8 check digits (PROTOCOL.md §1, §4.7)."""

from __future__ import annotations

import datetime as dt
import re
import secrets

from .clock import WARSAW


def crc8_bitwise(data: bytes) -> int:
    """CRC-8, polynomial 0x07, init 0x00, no reflection, no final XOR (PROTOCOL.md §4.7), bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


_CRC8_TABLE = tuple(crc8_bitwise(bytes([n])) for n in range(256))


def crc8(data: bytes) -> int:
    """The same CRC-8, a byte at a time from a table (two per accepted invoice: its EE and KSeF numbers)."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def reference_number(kind: str, when: dt.datetime) -> str:
    """`YYYYMMDD-TT-10hex-10hex-CC`, 36 characters; CC = CRC-8 over the first 33 characters."""
    if not re.fullmatch(r"[A-Z]{2}", kind):
        raise ValueError(f"reference type must be two capital letters, not {kind!r}")
    day = when.astimezone(WARSAW).strftime("%Y%m%d")
    body = f"{day}-{kind}-{secrets.token_hex(5).upper()}-{secrets.token_hex(5).upper()}"
    return f"{body}-{crc8(body.encode('ascii')):02X}"


def ksef_number(seller_nip: str, when: dt.datetime) -> str:
    """`NIP-YYYYMMDD-12hex-CC`, 35 characters; CC = CRC-8 over the first 32 characters."""
    day = when.astimezone(WARSAW).strftime("%Y%m%d")
    body = f"{seller_nip}-{day}-{secrets.token_hex(6).upper()}"
    return f"{body}-{crc8(body.encode('ascii')):02X}"


REFERENCE_RE = re.compile(r"^\d{8}-[A-Z]{2}-[0-9A-F]{10}-[0-9A-F]{10}-[0-9A-F]{2}$")
KSEF_NUMBER_RE = re.compile(r"^\d{10}-\d{8}-[0-9A-F]{12}-[0-9A-F]{2}$")


def is_valid_reference(text: str) -> bool:
    return bool(REFERENCE_RE.match(text)) and int(text[-2:], 16) == crc8(text[:33].encode("ascii"))


def is_valid_ksef_number(text: str) -> bool:
    return bool(KSEF_NUMBER_RE.match(text)) and int(text[-2:], 16) == crc8(text[:32].encode("ascii"))
