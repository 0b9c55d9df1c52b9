"""Property: whatever happens, and in whatever order (sends, lost answers, KSeF's verdicts, holds, stale
moves by a confused caller, crashes that lose everything not committed), every outbox invoice is in exactly
one state and KSeF never gets the same invoice twice (issue #15).

The model drives the real Ledger and Store (SQLite in a temporary folder, state files in a real outbox).
A "crash" copies the database files while the connection is open (what kill -9 leaves on disk: committed
transactions, in the WAL or not) and continues on the copy with nothing remembered in memory. A send is
only made after the store accepted the step QUEUED -> SUBMITTING; the rules try to send from any state, so
the property rests on INVOICE_TRANSITIONS and the store's compare-and-set, not on the model's good manners.
KSeF's side is a dict: hash -> how many times it received the invoice for processing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ksefd.daemon.failures import Failure
from ksefd.daemon.outbox.files import OutboxFiles
from ksefd.daemon.outbox.ledger import Ledger
from ksefd.store import InvoiceState, Store
from ksefd.store.invoices import IllegalTransition, StateConflict
from ksefd.store.states import INVOICE_TRANSITIONS, TERMINAL_INVOICE_STATES
from tests.daemon.support import load, write_config

S = InvoiceState
COMPANY = "acme"
LOG = structlog.get_logger("test")
RECEIVED_STATES = frozenset({S.PROCESSING, S.ACCEPTED, S.UPO_SAVED, S.DONE})


class OutboxModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="ksefd-prop-"))
        (self.folder / "none.token").write_text("unused\n")
        config = load(write_config(self.folder, "http://127.0.0.1:9/v2", [
            {"name": COMPANY, "nip": "9999999999", "token_file": "none.token"}]))
        self.company = config.companies[0]
        self.files = OutboxFiles(self.company, self.company.folders.outbox / ".ksefd")
        self.files.prepare()
        self.db_path = self.folder / "state-0.sqlite3"
        self.generation = 0
        self.ksef: Counter[str] = Counter()           # hash -> times KSeF took the invoice for processing
        self.dropped = 0
        self.store: Store
        self.ledger: Ledger

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def open_store(self) -> None:
        self.store = self.run(Store.open(self.db_path))
        self.ledger = Ledger(COMPANY, self.store, self.files, _utc_now, LOG)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------------------------

    def rows(self) -> list[Any]:
        return list(self.run(self.store.invoices.in_state(COMPANY, *InvoiceState)))

    def pick(self, index: int, *states: InvoiceState) -> Any | None:
        rows = [r for r in self.rows() if not states or r.state in states]
        return rows[index % len(rows)] if rows else None

    def try_move(self, row: Any, to_state: InvoiceState, **fields: Any) -> Any | None:
        """A move from the state the caller believes (the row as read): refused when it is not allowed or stale."""
        try:
            return self.run(self.ledger.move(row, to_state, **fields))
        except (IllegalTransition, StateConflict):
            return None

    # --- rules -----------------------------------------------------------------------------------------

    @rule(copies=st.integers(1, 2))
    def drop(self, copies: int) -> None:
        """A file claimed and checked; `copies`: the same invoice rows twice would be a duplicate-file, which
        intake refuses before a row is queued; here each drop is a distinct invoice."""
        for _ in range(copies):
            self.dropped += 1
            digest = f"hash-{self.dropped}"
            row = self.run(self.store.invoices.add(COMPANY, f"FV-{self.dropped}.xml", digest, 100))
            row = self.run(self.ledger.move(row, S.CHECKED, state_file=False))
            self.run(self.ledger.move(row, S.QUEUED))

    @rule(index=st.integers(0, 10_000), answer=st.sampled_from(["ok", "lost", "lost-not-received", "21184"]))
    def send(self, index: int, answer: str) -> None:
        """A send as the dispatcher makes it: a waiting invoice."""
        self._send(self.pick(index, S.QUEUED), answer)

    @rule(index=st.integers(0, 10_000), answer=st.sampled_from(["ok", "lost"]))
    def send_whatever_its_state(self, index: int, answer: str) -> None:
        """A confused sender tries an invoice that is not waiting: only QUEUED -> SUBMITTING may go out."""
        self._send(self.pick(index, *(s for s in InvoiceState if s != S.QUEUED)), answer)

    def _send(self, row: Any | None, answer: str) -> None:
        if row is None:
            return
        submitting = self.try_move(row, S.SUBMITTING)
        if submitting is None:
            return
        if answer == "21184":                       # KSeF did not take it (PROTOCOL.md §14.3): back to QUEUED
            self.run(self.ledger.move(submitting, S.QUEUED))
            return
        if answer != "lost-not-received":
            self.ksef[submitting.sha256] += 1
        if answer == "ok":
            self.run(self.ledger.move(submitting, S.PROCESSING, invoice_ref=f"ref-{row.id}"))
        else:
            self.run(self.ledger.move(submitting, S.IN_DOUBT))

    @rule(index=st.integers(0, 10_000))
    def resolve_in_doubt(self, index: int) -> None:
        """Ask KSeF by hash (the session's invoice list): received -> PROCESSING, never received -> QUEUED."""
        row = self.pick(index, S.IN_DOUBT)
        if row is None:
            return
        self.try_move(row, S.PROCESSING if self.ksef[row.sha256] else S.QUEUED)

    @rule(index=st.integers(0, 10_000), verdict=st.sampled_from(["accepted", "rejected", "cancelled"]))
    def ksef_verdict(self, index: int, verdict: str) -> None:
        row = self.pick(index, S.PROCESSING)
        if row is None:
            return
        if verdict == "accepted":
            accepted = self.try_move(row, S.ACCEPTED, ksef_number=f"KSEF-{row.id}")
            if accepted is not None:
                self.run(self.ledger.finish([accepted]))
        elif verdict == "rejected":
            self.run(self.ledger.reject(row, {"stage": "ksef", "code": "450", "message": "rejected"}))
            self.ksef[row.sha256] = 0               # a rejected invoice was not taken: sending it again is new
        else:                                       # 405/550: KSeF cancelled the processing; send again
            if self.try_move(row, S.QUEUED) is not None:
                self.ksef[row.sha256] = 0

    @rule(index=st.integers(0, 10_000))
    def defer_and_retry(self, index: int) -> None:
        row = self.pick(index, S.QUEUED)
        if row is not None and (deferred := self.try_move(row, S.DEFERRED)) is not None:
            self.try_move(deferred, S.QUEUED)

    @rule()
    def hold_and_release(self) -> None:
        failure = Failure(verdict="hold", code="credentials", message="the token was revoked")
        self.run(self.ledger.hold_waiting(failure, busy=()))
        self.run(self.ledger.release_held())

    @rule(index=st.integers(0, 10_000), to_state=st.sampled_from(list(InvoiceState)))
    def confused_caller(self, index: int, to_state: InvoiceState) -> None:
        """Any step from any state: the store refuses what INVOICE_TRANSITIONS does not allow."""
        row = self.pick(index)
        if row is None or to_state == S.SUBMITTING:
            return
        allowed = to_state in INVOICE_TRANSITIONS[row.state]
        risky = to_state == S.QUEUED and row.state in (S.IN_DOUBT, S.PROCESSING)   # only on KSeF's word
        endings = TERMINAL_INVOICE_STATES | {S.ACCEPTED, S.UPO_SAVED}    # each has its own function in the ledger
        if allowed and not risky and to_state not in endings:
            assert self.try_move(row, to_state) is not None
        elif not allowed:
            assert self.try_move(row, to_state) is None

    @rule()
    def crash(self) -> None:
        """kill -9: what is on disk (the database files, copied while open) is all the next start has."""
        self.generation += 1
        copy = self.folder / f"state-{self.generation}.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.db_path}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{copy}{suffix}")
        self.run(self.store.close())
        self.db_path = copy
        self.open_store()
        # At start, a send that may have been on the wire is in doubt (the daemon asks KSeF before anything).
        for row in self.rows():
            if row.state == S.SUBMITTING:
                self.run(self.ledger.move(row, S.IN_DOUBT))

    # --- invariants ------------------------------------------------------------------------------------

    @invariant()
    def every_invoice_in_exactly_one_state(self) -> None:
        if not hasattr(self, "store"):
            return
        rows = self.rows()
        assert len(rows) == self.dropped and len({r.id for r in rows}) == len(rows)
        counts = self.run(self.store.invoices.counts(COMPANY))
        assert sum(counts.values()) == self.dropped

    @invariant()
    def never_sent_twice(self) -> None:
        assert all(times <= 1 for times in self.ksef.values()), self.ksef

    @invariant()
    def received_means_known(self) -> None:
        """An invoice KSeF holds is never back in a state from which it could be sent again unasked."""
        if not hasattr(self, "store"):
            return
        for row in self.rows():
            if self.ksef[row.sha256] and row.state in (S.QUEUED, S.DEFERRED, S.HELD):
                raise AssertionError(f"{row.file_name} is {row.state} though KSeF has it")
            if row.state in TERMINAL_INVOICE_STATES:
                assert not self.files.state_path(row.file_name).exists()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


OutboxModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestOutboxStateMachine = OutboxModel.TestCase
