"""The one permission to name when KSeF answers 403 `missing-permissions` (issue #14 point 5; PROTOCOL.md
§10.1): KSeF lists every permission that would do, an accountant needs the one their company lacks."""

from __future__ import annotations

from ksefd.i18n import N_

from .words import Words, say

# The permission an ordinary company needs, first: sending, then receiving. The others in KSeF's lists
# (PefInvoiceWrite, EnforcementOperations, Introspection, ...) belong to special subjects.
PREFERRED = ("InvoiceWrite", "InvoiceRead", "CredentialsManage", "CredentialsRead")


def one_permission(required: list[str]) -> str | None:
    """The one permission to ask for, out of KSeF's "any of" list."""
    return next((p for p in PREFERRED if p in required), required[0] if required else None)


def missing_permission_text(required: list[str], present: list[str], detail: str) -> tuple[Words, str | None]:
    """(the sentence, the permission) for a 403 missing-permissions; the company's part comes in `explain`."""
    needed = one_permission(required)
    held: str | Words = ", ".join(present) or say(N_("none"))
    if needed is None:
        return say(N_("KSeF refused: a permission is missing (KSeF did not say which; the credentials hold "
                      "{held}). KSeF: {detail}"), held=held, detail=detail), None
    return say(N_("KSeF refused: the credentials lack the permission {needed} (they hold {held})"),
               needed=needed, held=held), needed
