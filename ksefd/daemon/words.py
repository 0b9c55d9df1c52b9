"""A text for people kept as message ids with their values, so it can be shown in any language later
(issue #14 point 1): a hold's reason is stored this way in `company_holds.reason` and put into words
when `ksefd status`, the status page or `ksefd resume` shows it.

Why not store the sentence itself: `ksefd status` runs with the config as it is now, and a hold can be
weeks old. After `language = "en"` (a reload, or an edit and a restart) a sentence stored in Polish would
stay Polish until the hold is renewed; message ids with values are shown in the language of the moment.
A stored reason that is not in this form (written by an older ksefd) is shown as it is.

Values are plain strings (KSeF's or the client's own words, a NIP, a path: never translated) or a nested
`Words` (a part of the sentence that is itself a message id, translated too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ksefd.i18n import Words, render, say

__all__ = ["MARK", "Words", "dump", "english", "error_text", "of_error", "render", "say", "shown", "stored_error"]
MARK = "ksefd-words"          # the key that tells a stored reason in this form from plain text


def of_error(exc: BaseException) -> str | Words:
    """A client error's own words (`ksefd.ksef` errors made from words keep them in `words`), to be nested
    as a value and shown in the reader's language; any other error's English text."""
    words: Words = getattr(exc, "words", ())
    return words or str(exc)


def stored_error(exc: BaseException, limit: int = 500) -> str:
    """An error to keep in the store and show later with `shown` (in the language of that moment)."""
    said = of_error(exc)
    return said[:limit] if isinstance(said, str) else dump(said)


def error_text(exc: BaseException, language: str | None = None) -> str:
    """An error for people, in `language` (default: the current one): a client error made from words is
    translated; any other is its own text."""
    said = of_error(exc)
    return said if isinstance(said, str) else render(said, language)


def english(words: Words) -> str:
    """For the JSON log, which stays English."""
    return render(words, "en")


def dump(words: Words) -> str:
    return json.dumps({MARK: [[m, _plain(v)] for m, v in words]}, ensure_ascii=False)


def _plain(values: Mapping[str, str | Words]) -> dict[str, Any]:
    return {k: v if isinstance(v, str) else {MARK: [[m, _plain(x)] for m, x in v]} for k, v in values.items()}


def _load(data: Any) -> Words:
    parts = []
    for message, values in data[MARK]:
        parts.append((str(message), {str(k): v if isinstance(v, str) else _load(v) for k, v in values.items()}))
    return tuple(parts)


def shown(stored: str, language: str | None = None) -> str:
    """A stored reason for people: message ids put into words, older plain text as it is."""
    if not stored.startswith("{"):
        return stored
    try:
        return render(_load(json.loads(stored)), language)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return stored
