"""The states an outbox invoice and a KSeF session go through, and the only allowed steps between them
(DESIGN.md, an invoice's life). The repositories refuse any other step, so the daemon cannot skip one.
"""

from __future__ import annotations

from enum import StrEnum


class InvoiceState(StrEnum):
    CLAIMED = "claimed"          # renamed out of the outbox, row created (hash, size, name)
    CHECKED = "checked"          # passed the local checks (facts recorded)
    QUEUED = "queued"            # waiting for a session
    OFFLINE = "offline"          # KOD I/II written; to be sent with offlineMode=true before its deadline
    SUBMITTING = "submitting"    # intent recorded: the send request may be on the wire
    IN_DOUBT = "in_doubt"        # the answer to a send was lost (crash, timeout): ask KSeF before anything else
    PROCESSING = "processing"    # KSeF took it (invoice reference known; status 100/150)
    ACCEPTED = "accepted"        # KSeF number assigned (status 200)
    UPO_SAVED = "upo_saved"      # NAME.upo.xml written
    DONE = "done"                # sent/ complete; nothing left to do
    REJECTED = "rejected"        # locally or by KSeF; rejected/NAME.error.json written or to be written
    DEFERRED = "deferred"        # transient failure before KSeF took it; retried at next_attempt_at
    HELD = "held"                # needs a person (credentials, permissions); resumes by itself once fixed
    RETURNED = "returned"        # never sent: its file went back to outbox/ untouched (the company has send = false)
    REDROP = "redrop"            # the same bytes as an invoice KSeF accepted: its result copied under this name


S = InvoiceState
# RETURNED is reachable only from states in which KSeF has never seen the invoice (nothing was sent, no
# send is on the wire): giving the file back then cannot lose or double anything. REDROP only from
# CLAIMED: a re-drop is recognised by its hash before it is checked or queued.
INVOICE_TRANSITIONS: dict[InvoiceState, frozenset[InvoiceState]] = {
    S.CLAIMED: frozenset({S.CHECKED, S.REJECTED, S.RETURNED, S.REDROP}),
    S.CHECKED: frozenset({S.QUEUED, S.OFFLINE, S.REJECTED, S.RETURNED}),
    S.QUEUED: frozenset({S.SUBMITTING, S.OFFLINE, S.DEFERRED, S.HELD, S.RETURNED}),
    S.OFFLINE: frozenset({S.SUBMITTING, S.DEFERRED, S.HELD}),
    # back to QUEUED: KSeF said the invoice was not taken (21184 "session temporarily unavailable").
    S.SUBMITTING: frozenset({S.PROCESSING, S.IN_DOUBT, S.QUEUED, S.DEFERRED, S.REJECTED, S.HELD}),
    # resolved by the session's invoice list (by hash), the invoice status, or a 440 with the same hash;
    # back to QUEUED only when KSeF provably never received it.
    S.IN_DOUBT: frozenset({S.PROCESSING, S.ACCEPTED, S.REJECTED, S.QUEUED}),
    # back to QUEUED: status 405/550, "cancelled, send again".
    S.PROCESSING: frozenset({S.ACCEPTED, S.REJECTED, S.QUEUED}),
    S.ACCEPTED: frozenset({S.UPO_SAVED}),
    S.UPO_SAVED: frozenset({S.DONE}),
    S.DEFERRED: frozenset({S.QUEUED, S.OFFLINE, S.HELD, S.RETURNED}),
    S.HELD: frozenset({S.QUEUED, S.OFFLINE, S.RETURNED}),
    S.DONE: frozenset(),
    S.REJECTED: frozenset(),
    S.RETURNED: frozenset(),
    S.REDROP: frozenset(),
}
# States whose invoice KSeF never saw and may be given back to the ERP (send switched off).
RETURNABLE_STATES = frozenset(s for s, nexts in INVOICE_TRANSITIONS.items() if S.RETURNED in nexts)
TERMINAL_INVOICE_STATES = frozenset(s for s, nexts in INVOICE_TRANSITIONS.items() if not nexts)
# Where an invoice waits for KSeF's answer or for a send: what `ksefd status` calls "in KSeF".
IN_KSEF_STATES = frozenset({S.SUBMITTING, S.IN_DOUBT, S.PROCESSING})


class SessionState(StrEnum):
    OPEN = "open"                # opened (201 received); invoices may be sent / parts uploaded
    CLOSING = "closing"          # close intent recorded: the close request may be on the wire
    CLOSED = "closed"            # KSeF confirmed the close (204); processing and UPO generation follow
    DONE = "done"                # final status read, the session UPO saved
    FAILED = "failed"            # KSeF ended it with an error status (e.g. 440, 445, 21208)
    ABANDONED = "abandoned"      # given up locally (e.g. a batch upload interrupted by a restart)


T = SessionState
SESSION_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    T.OPEN: frozenset({T.CLOSING, T.FAILED, T.ABANDONED}),
    T.CLOSING: frozenset({T.CLOSED, T.FAILED}),
    T.CLOSED: frozenset({T.DONE, T.FAILED}),
    T.DONE: frozenset(),
    T.FAILED: frozenset(),
    T.ABANDONED: frozenset(),
}
UNFINISHED_SESSION_STATES = frozenset({T.OPEN, T.CLOSING, T.CLOSED})
