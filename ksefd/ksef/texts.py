"""The client's messages for people as message ids with values (issue #14 point 1), so that the daemon and
the CLI can show a client error in the reader's language while the exception's `str` (and so the JSON log)
stays English.

A message is `said(N_("the password file {path} is empty"), path=...)`: the same shape as the daemon's
`ksefd.daemon.words.Words` (one or more (message id, values) parts; a value is a plain string, never
translated, or nested words). `KsefError(words)` keeps them in `exc.words` and its English text in `str(exc)`.
"""

from __future__ import annotations

from ksefd.i18n import Words, render, say

__all__ = ["Words", "english", "said"]

said = say


def english(words: Words) -> str:
    """The words in English: the exception's `str`, for logs."""
    return render(words, "en")
