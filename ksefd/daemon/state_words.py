"""An outbox invoice's state in a word or two for people (issue #14 point 1): the demo's live lines and the
status page's tables. The state codes themselves (store/states.py) stay English and stable: they are what
`ksefd status --json`, the state database and the logs carry, and what ERPs and scripts match on."""

from __future__ import annotations

from ksefd.i18n import N_, translate
from ksefd.store import InvoiceState

S = InvoiceState

LABELS: dict[InvoiceState, str] = {
    S.CLAIMED: N_("received"),
    S.CHECKED: N_("checked"),
    S.QUEUED: N_("queued"),
    S.OFFLINE: N_("issued offline"),
    S.SUBMITTING: N_("sending"),
    S.IN_DOUBT: N_("in doubt"),
    S.PROCESSING: N_("in KSeF"),
    S.ACCEPTED: N_("accepted"),
    S.UPO_SAVED: N_("UPO saved"),
    S.DONE: N_("done"),
    S.REJECTED: N_("rejected"),
    S.DEFERRED: N_("deferred"),
    S.HELD: N_("on hold"),
    S.RETURNED: N_("returned"),
    S.REDROP: N_("re-drop"),
}


def state_label(state: InvoiceState | str) -> str:
    """The state in the current language; a code this ksefd does not know is shown as it is."""
    try:
        return translate(LABELS[InvoiceState(state)])
    except (ValueError, KeyError):
        return str(state)
