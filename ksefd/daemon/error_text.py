"""`rejected/NAME.error.json` in the config's language (issue #14 point 1): the `hint` (what to do) is a
message id of the catalogue (invoice/errors.py HINTS, outbox/outcomes.py KSEF_HINTS) and is written
translated; the `message` was put into words where it was made (`_()` with the values found, in the
daemon's language); `code`, `stage` and `details` stay as they are (ERPs match on codes), and KSeF's own
description stays as KSeF sent it, under `ksefStatus`."""

from __future__ import annotations

from typing import Any

from ksefd import i18n


def localize(error: dict[str, Any], language: str | None = None) -> dict[str, Any]:
    hint = error.get("hint")
    if not isinstance(hint, str) or not hint:
        return error
    return {**error, "hint": i18n.translate(hint, language)}
