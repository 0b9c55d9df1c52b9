"""The client's messages for people as message ids with values (issue #14 point 1), so that the daemon and
the CLI can show a client error in the reader's language while the exception's `str` (and so the JSON log)
stays English.

A message is `said(N_("the password file {path} is empty"), path=...)`: the same shape as the daemon's
`ksefd.daemon.words.Words` (one or more (message id, values) parts; a value is a plain string, never
translated, or nested words). `KsefError(words)` keeps them in `exc.words` and its English text in `str(exc)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

from ksefd import i18n

Part = tuple[str, Mapping[str, Union[str, "Words"]]]
Words = tuple[Part, ...]


def said(message: str, /, **values: str | Words) -> Words:
    """One message id (English, marked with N_ where it is written) and its values."""
    return ((message, values),)


def english(words: Words) -> str:
    """The words in English: the exception's `str`, for logs."""
    out = []
    for message, values in words:
        filled = {k: v if isinstance(v, str) else english(v) for k, v in values.items()}
        text = i18n.translate(message, "en")
        out.append(text.format(**filled) if filled else text)
    return " ".join(out)
