"""`rejected/NAME.error.json` in the config's language (issue #14 point 1): the `hint` (what to do) is a
message id of the catalogue (invoice/errors.py HINTS) and is written translated; `code`, `stage` and
`details` stay as they are (ERPs match on codes), and so does `message`, which carries KSeF's or the
checker's own words with the values found."""

from __future__ import annotations

from typing import Any

from ksefd import i18n


def localize(error: dict[str, Any], language: str | None = None) -> dict[str, Any]:
    hint = error.get("hint")
    if not isinstance(hint, str) or not hint:
        return error
    return {**error, "hint": i18n.translate(hint, language)}
