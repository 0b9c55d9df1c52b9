"""A token copied with invisible characters (issue #14 point 5): `KsefToken.parse` drops them (a BOM, a
zero-width space, a non-breaking space, line breaks inside; ksefd/ksef/credentials.py); this says in the log
what was removed, by character name and count, once per file content, and never the token itself."""

from __future__ import annotations

import collections
import unicodedata
from pathlib import Path

import structlog

from ksefd.ksef import clean_token_text

log = structlog.get_logger("ksefd.daemon.credentials")

_reported: set[tuple[str, str, tuple[tuple[str, int], ...]]] = set()


def _name(ch: str) -> str:
    names = {"\ufeff": "BYTE ORDER MARK (BOM)", " ": "SPACE", "\t": "TAB", "\r": "CARRIAGE RETURN",
             "\n": "LINE FEED"}
    return f"{names.get(ch) or unicodedata.name(ch, 'UNNAMED CHARACTER')} (U+{ord(ch):04X})"


def removed_characters(text: str) -> list[tuple[str, int]]:
    """What cleaning drops from `text`, by character name and count; the line end(s) after the token, which
    every editor writes, are not counted."""
    body = text.rstrip("\r\n")
    dropped = collections.Counter(ch for ch in body if ch not in clean_token_text(ch))
    return sorted((_name(ch), count) for ch, count in dropped.items())


def note_token_cleaning(company: str, path: Path, text: str) -> list[tuple[str, int]]:
    removed = removed_characters(text)
    key = (company, str(path), tuple(removed))
    if removed and key not in _reported:
        _reported.add(key)
        log.warning("credentials.token_cleaned", company=company, file=str(path),
                    removed=", ".join(f"{count} x {name}" for name, count in removed),
                    fix="the token was used without them; save the file as plain text to silence this")
    return removed
