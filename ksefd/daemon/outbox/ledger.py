"""The outbox's queue manager: the one place that moves an invoice from state to state (DESIGN.md, the
daemon's shape; like Postfix's qmgr: many producers and consumers, one place that moves a message).

Intake, the channels (online, batch), the tracker and the company's hold ask the ledger; none of them
writes an invoice's state itself. Each move is:

1. the checked transition in SQLite (store/states.py refuses any step not in INVOICE_TRANSITIONS, and a
   stale `from` state raises StateConflict instead of overwriting);
2. the invoice's `outbox/NAME.state.json` rewritten for the ERP (removed once the invoice is finished); a new
   invoice's QUEUED file only once it has waited SHOW_QUEUED_AFTER (`show_later`);
3. a wake-up of the loop that acts next: the dispatcher for invoices waiting to be sent, the tracker for
   invoices KSeF is working on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from ksefd.i18n import N_, _, translate
from ksefd.store import Change, InvoiceRow, InvoiceState, OfflineInvoice, StateConflict, Store

from ..failures import Failure
from .files import OutboxFiles

S = InvoiceState

# What the state file tells a person while an invoice waits: message ids, written in the config's language.
STATE_MESSAGES: dict[InvoiceState, str] = {
    S.CLAIMED: N_("received by ksefd; being checked"),
    S.CHECKED: N_("passed the local checks"),
    S.QUEUED: N_("waiting to be sent to KSeF"),
    S.SUBMITTING: N_("being sent to KSeF"),
    S.IN_DOUBT: N_("sent to KSeF, the answer was lost; ksefd is asking KSeF what happened"),
    S.PROCESSING: N_("in KSeF, waiting for its KSeF number"),
    S.ACCEPTED: N_("accepted by KSeF; fetching its UPO"),
    S.UPO_SAVED: N_("accepted by KSeF; UPO saved"),
    S.DEFERRED: N_("waiting to be retried after a temporary failure"),
    S.OFFLINE: N_("issued offline: KOD I/II and NAME.offline.json are in the offline folder; ksefd sends it to "
                  "KSeF with offlineMode before its deadline"),
    S.HELD: N_("on hold: the company needs a person's attention (see ksefd status)"),
}
# Which loop acts after a move into a state.
DISPATCHER_STATES = frozenset({S.QUEUED, S.DEFERRED, S.REJECTED, S.DONE, S.OFFLINE})
# States an invoice may be issued offline from (the offline desk looks after a move into one of them).
OFFLINE_DESK_STATES = frozenset({S.QUEUED, S.DEFERRED, S.HELD})
TRACKER_STATES = frozenset({S.IN_DOUBT, S.PROCESSING, S.ACCEPTED, S.UPO_SAVED})
# A new invoice's QUEUED state file is written only once it has waited this long (seconds): a backlog's invoices
# are taken into a batch at once, and a state file per invoice that lived a second was a file created and
# removed for nothing (on ext4 a creation is its largest kernel cost, 2-300 us, issue #16). The file is
# informational (DESIGN.md, the folder contract: the ERP reads the state of an invoice that waits), as for a
# batch's SUBMITTING files (batch.SHOW_AFTER); SQLite holds the step, committed at once as before.
SHOW_QUEUED_AFTER = 2.0


class Ledger:
    def __init__(self, company: str, store: Store, files: OutboxFiles, now: Callable[[], dt.datetime],
                 log: Any) -> None:
        self.company = company
        self.store = store
        self.files = files
        self.now = now
        self.log = log
        self.dispatch_due = asyncio.Event()      # the dispatcher has something to look at
        self.track_due = asyncio.Event()         # the tracker has something to look at
        self.offline_due = asyncio.Event()       # the offline desk has something to look at (offline.py)
        # QUEUED state files owed (`show_later`): invoice id -> its row. An entry leaves only under the lock,
        # once its file is written (`_write_owed`) or once a move takes the invoice (`_claim`), so no owed
        # file can land after a later state's file or after the invoice's end removed it.
        self._owed: dict[int, InvoiceRow] = {}
        self._owed_lock = threading.Lock()
        self._owed_writes: set[asyncio.Future[None]] = set()

    # --- moves --------------------------------------------------------------------------------------

    async def move(self, row: InvoiceRow, to_state: InvoiceState, *, show: dict[str, Any] | None = None,
                   from_state: InvoiceState | None = None, state_file: bool = True, **fields: Any) -> InvoiceRow:
        """One invoice from `from_state` (default: the row's) to `to_state`; `show` adds to its state file
        (`state_file=False`: a step the next one follows at once, so the file is written once)."""
        self._claim([row.id])
        moved = await self.store.invoices.transition(row.id, from_state or row.state, to_state, **fields)
        if state_file:
            self._after([moved], show)
        else:
            self._wake(to_state)
        return moved

    async def update(self, row: InvoiceRow, *, show: dict[str, Any] | None = None, **fields: Any) -> InvoiceRow:
        """Change an invoice's fields without a step (e.g. moved to a new session while SUBMITTING)."""
        self._claim([row.id])
        updated = await self.store.invoices.update(row.id, row.state, **fields)
        self._after([updated], show)
        return updated

    async def move_many(self, ids: Sequence[int], from_state: InvoiceState, to_state: InvoiceState, *,
                        show: dict[str, Any] | None = None, state_files: bool = True,
                        through: InvoiceState | None = None, known: Sequence[InvoiceRow] | None = None,
                        show_later: bool = False, **fields: Any) -> list[InvoiceRow]:
        """A group in one commit; their state files are written in a worker thread (thousands of small file
        replacements must not stall the event loop). `state_files=False`: the caller finishes them at once.
        `through`: a step on the way, taken in the same commit (e.g. CLAIMED -> CHECKED -> QUEUED).
        `known`: the rows of `ids` as the caller has them, fresh (only its task writes them): the moved rows
        are built from them instead of read back. `show_later`: their state files only if they still wait
        SHOW_QUEUED_AFTER from now (a new invoice's QUEUED; `show_later`)."""
        if not ids:
            return []
        self._claim(ids)
        states = [from_state, through, to_state] if through is not None else [from_state, to_state]
        moved = await self.store.invoices.transition_steps(list(ids), states, known=_fresh(known, from_state),
                                                           **fields)
        if state_files and show_later and show is None:
            self.show_later(moved)
        elif state_files:
            await self._show_many(moved, show)
        self._wake(to_state)
        return moved

    async def move_each(self, changes: Sequence[Change], from_state: InvoiceState,
                        to_state: InvoiceState, *, known: Sequence[InvoiceRow] | None = None) -> list[InvoiceRow]:
        """A group with fields of their own, in one commit; state files left as they are (the caller finishes
        the group at once, e.g. a batch's accepted invoices whose UPOs follow). `known`: as for move_many."""
        self._claim(c.invoice_id for c in changes)
        moved = await self.store.invoices.transition_each(changes, from_state, to_state,
                                                          known=_fresh(known, from_state))
        self._wake(to_state)
        return moved

    async def move_groups(self, groups: Sequence[tuple[Sequence[Change], InvoiceState, InvoiceState,
                                                       Sequence[InvoiceRow] | None]]) -> list[list[InvoiceRow]]:
        """Several `move_each` groups, each with its own step, in ONE commit (online sends, grouped.py)."""
        moved = await self.store.invoices.transition_groups(
            [(changes, from_state, to_state, _fresh(known, from_state)) for changes, from_state, to_state, known
             in groups])
        for group in groups:
            self._wake(group[2])
        return moved

    async def show_many(self, rows: list[InvoiceRow], extra: dict[str, Any] | None = None, *,
                        stop: threading.Event | None = None) -> None:
        """Rewrite many invoices' state files in a worker thread (after a `move_many(state_files=False)`).
        `stop`: once set, the rest are left as they are (the file being written is finished first)."""
        self._claim(r.id for r in rows)
        if rows:
            await self._show_many(rows, extra, stop)

    def show(self, row: InvoiceRow, extra: dict[str, Any] | None = None) -> None:
        """Rewrite the invoice's state file (informational; a failure to write it is logged, not fatal)."""
        self._claim([row.id])
        self._write_state(row, extra, self.now())

    # --- endings --------------------------------------------------------------------------------------

    async def reject(self, row: InvoiceRow, error: dict[str, Any], *, status_code: int | None = None,
                     from_state: InvoiceState | None = None) -> InvoiceRow:
        """rejected/NAME.xml (the bytes as received) + NAME.error.json first, then REJECTED in SQLite; a crash
        in between rewrites the same bytes at the next attempt."""
        self._claim([row.id])
        data = self.files.read_work(row)
        stem = self.files.write_rejected(row.file_name, data if data is not None else b"", error)
        fields: dict[str, Any] = {"last_error": error, "result_name": stem}
        if status_code is not None:
            fields["status_code"] = status_code
        rejected = await self.store.invoices.transition(row.id, from_state or row.state, S.REJECTED, detail=error,
                                                        **fields)
        self.log.info("outbox.rejected", file=row.file_name, invoice=row.id, stage=error.get("stage"),
                      code=error.get("code"), rejected_as=stem)
        self.files.clear_state(rejected)
        self.files.discard_work(rejected)
        self._wake(S.REJECTED)
        return rejected

    async def redrop(self, row: InvoiceRow, original: InvoiceRow, data: bytes) -> InvoiceRow:
        """A byte-identical re-drop of an invoice KSeF accepted (original DONE): nothing is sent; its result
        goes to sent/ under the re-drop's own name (the bytes, the original's UPO, a NAME.ksef.json with
        `"redrop": true` pointing at the original), then CLAIMED -> REDROP. The stem is recorded in the row
        first, so a crash in the middle writes the same files again under the same stem."""
        self._claim([row.id])
        stem = row.result_name or self.files.redrop_stem(row.file_name, original.result_name)
        if row.result_name is None:
            row = await self.store.invoices.update(row.id, row.state, result_name=stem)
        record = self.files.read_ksef_json(original.result_name) if original.result_name else {}
        record.update({
            "file": row.file_name, "redrop": True, "originalFile": original.file_name,
            "originalResult": f"{original.result_name or original.file_name}", "originalInvoiceId": original.id,
            "ksefNumber": original.ksef_number, "invoiceHash": row.sha256, "redropReceivedAt":
                row.created_at.isoformat(),
            "note": _("the same bytes as an invoice KSeF already accepted: not sent again; this is its result")})
        upo = self.files.read_sent(original.result_name, ".upo.xml") if original.result_name else None
        if upo is None and original.session_id is not None:
            saved = await self.store.sessions.upos(original.session_id, invoice_id=original.id)
            upo = saved[0].xml if saved else None
        await asyncio.to_thread(self.files.write_redrop, stem, row.file_name, data, record, upo)
        done = await self.store.invoices.transition(
            row.id, S.CLAIMED, S.REDROP, ksef_number=original.ksef_number, result_name=stem,
            detail={"redropOf": original.id, "originalFile": original.file_name, "ksefNumber": original.ksef_number})
        self.files.clear_state(done)
        self.files.discard_work(done)
        self.log.info("outbox.redrop_answered", file=row.file_name, sent_as=stem, original=original.file_name,
                      ksef_number=original.ksef_number)
        return done

    async def give_back(self, row: InvoiceRow) -> InvoiceRow:
        """Sending was switched off: the claimed file goes back to outbox/ with its bytes untouched (a rename),
        then the row becomes RETURNED (never sent). A crash in between: the next start finds the row still
        waiting and its working file gone, and only marks it."""
        self._claim([row.id])
        name = await asyncio.to_thread(self.files.give_back, row)
        returned = await self.store.invoices.transition(row.id, row.state, S.RETURNED, result_name=name,
                                                        detail={"reason": "send = false", "file": name})
        self.files.clear_state(returned)
        self.log.info("outbox.returned_to_outbox", file=row.file_name, returned_as=name)
        return returned

    async def finish(self, rows: Sequence[InvoiceRow]) -> list[InvoiceRow]:
        """ACCEPTED (UPO written) -> UPO_SAVED -> DONE, in one commit whatever the number of invoices; then
        the state files and working copies go."""
        if not rows:
            return []
        return await self.done([r.id for r in rows], S.ACCEPTED, known=rows)

    async def done(self, ids: Sequence[int], from_state: InvoiceState = S.UPO_SAVED, *,
                   known: Sequence[InvoiceRow] | None = None) -> list[InvoiceRow]:
        """UPO_SAVED -> DONE (e.g. after a crash between the two steps); from ACCEPTED both steps in one commit.
        `known`: as for move_many (only the ids, names and working paths of the finished rows are used)."""
        if not ids:
            return []
        self._claim(ids)
        steps = [S.ACCEPTED, S.UPO_SAVED, S.DONE] if from_state == S.ACCEPTED else [from_state, S.DONE]
        done = await self.store.invoices.transition_steps(list(ids), steps, known=_fresh(known, from_state))
        await asyncio.to_thread(self.files.finished, done)
        self._wake(S.DONE)
        return done

    # --- offline (PROTOCOL.md §8) ---------------------------------------------------------------------

    async def go_offline(self, row: InvoiceRow, record: OfflineInvoice, show: dict[str, Any]) -> InvoiceRow | None:
        """Issue an invoice offline: its offline record, then the step to OFFLINE (offline=1 and the deadline
        in the same commit); None when another task moved it first (it was being sent, say). The caller
        writes KOD I/II right after; a crash in between is repaired by the desk at the next start."""
        await self.store.offline.add(record)
        try:
            return await self.move(row, S.OFFLINE, show=show, offline=True, offline_deadline=record.deadline,
                                   next_attempt_at=None, detail={"offline": record.mode, "reason": record.reason})
        except StateConflict:
            await self.store.offline.discard(row.id)
            return None

    async def retry_offline_now(self) -> None:
        """KSeF is back: offline invoices waiting out a retry backoff are due now (sent before new work)."""
        ids = [r.id for r in await self.store.invoices.in_state(self.company, S.DEFERRED) if r.offline]
        await self.move_many(ids, S.DEFERRED, S.OFFLINE, next_attempt_at=None, detail={"offline": "KSeF is back"})

    async def back_offline(self, ids: Sequence[int], from_state: InvoiceState = S.QUEUED) -> list[InvoiceRow]:
        """Offline invoices that KSeF did not take (back in QUEUED) wait as OFFLINE again."""
        if not ids:
            return []
        return await self.move_many(ids, from_state, S.OFFLINE, detail={"offline": "waits again"})

    # --- holds ----------------------------------------------------------------------------------------

    async def hold_waiting(self, failure: Failure, busy: Collection[int]) -> None:
        """The company went on hold: its waiting invoices (not those a send task holds) become HELD."""
        for state in (S.QUEUED, S.DEFERRED):
            ids = [i for i in await self.store.invoices.ids_in(self.company, [state]) if i not in busy]
            await self.move_many(ids, state, S.HELD, show={"hold": failure.text()},
                                 detail={"hold": failure.code})

    async def hold_one(self, row: InvoiceRow, failure: Failure, stage: str) -> InvoiceRow:
        """An invoice whose own send found the reason for the hold."""
        return await self.move(row, S.HELD, show={"hold": failure.text()}, last_error=failure.as_error(stage))

    async def release_held(self) -> int:
        ids = await self.store.invoices.ids_in(self.company, [S.HELD])
        await self.move_many(ids, S.HELD, S.QUEUED, detail={"hold": "released"})
        return len(ids)

    # --- QUEUED state files written late (SHOW_QUEUED_AFTER) ---------------------------------------------

    def show_later(self, rows: Sequence[InvoiceRow]) -> None:
        """These waiting invoices' state files, written once SHOW_QUEUED_AFTER has passed, for those no move
        has taken meanwhile (a move writes or removes the file itself). Lost with a kill -9: the next start
        owes them again (Intake.run), and `show_owed` writes what is still owed at a graceful stop."""
        if not rows:
            return
        for row in rows:
            self._owed[row.id] = row
        ids = [row.id for row in rows]
        asyncio.get_running_loop().call_later(SHOW_QUEUED_AFTER, self._show_due, ids)

    def _show_due(self, ids: list[int]) -> None:
        ids = [i for i in ids if i in self._owed]
        if ids:
            writing = asyncio.ensure_future(asyncio.to_thread(self._write_owed, ids, self.now()))
            self._owed_writes.add(writing)
            writing.add_done_callback(self._owed_writes.discard)

    async def show_owed(self) -> None:
        """A graceful stop: every state file still owed is written now (the invoices wait for the next start)."""
        if self._owed:
            await asyncio.to_thread(self._write_owed, list(self._owed), self.now())
        if self._owed_writes:
            await asyncio.wait(set(self._owed_writes))

    def _write_owed(self, ids: list[int], now: dt.datetime) -> None:
        for invoice_id in ids:
            with self._owed_lock:
                row = self._owed.get(invoice_id)
                if row is not None:
                    self._write_state(row, None, now)
                    del self._owed[invoice_id]

    def _claim(self, ids: Iterable[int]) -> None:
        """These invoices' state files are the caller's from now on: their owed QUEUED files are dropped, and
        one being written meanwhile is finished first (the lock: held only for one file), so it never lands after
        what the caller writes or removes. Nothing owed (the usual case): nothing to do."""
        if not self._owed:
            return
        with self._owed_lock:
            for invoice_id in ids:
                self._owed.pop(invoice_id, None)

    # --- internals ------------------------------------------------------------------------------------

    def _after(self, rows: list[InvoiceRow], show: dict[str, Any] | None) -> None:
        now = self.now()
        for row in rows:
            if row.state in (S.DONE, S.REJECTED):
                self.files.clear_state(row)
            else:
                self._write_state(row, show, now)
            self._wake(row.state)

    def _wake(self, state: InvoiceState) -> None:
        if state in OFFLINE_DESK_STATES:
            self.offline_due.set()
        if state in DISPATCHER_STATES:
            self.dispatch_due.set()
        if state in TRACKER_STATES:
            self.track_due.set()

    async def _show_many(self, rows: list[InvoiceRow], extra: dict[str, Any] | None,
                         stop: threading.Event | None = None) -> None:
        now = self.now()

        def write_all() -> None:
            for row in rows:
                if stop is not None and stop.is_set():
                    return
                self._write_state(row, extra, now)

        await asyncio.to_thread(write_all)

    def _write_state(self, row: InvoiceRow, extra: dict[str, Any] | None, now: dt.datetime) -> None:
        message = translate(STATE_MESSAGES[row.state]) if row.state in STATE_MESSAGES else str(row.state)
        info: dict[str, Any] = {"updatedAt": now.isoformat()}
        if row.next_attempt_at is not None and row.state in (S.DEFERRED, S.QUEUED):
            info["nextAttemptAt"] = row.next_attempt_at.isoformat()
        if row.last_error:
            info["lastError"] = row.last_error
        if row.invoice_ref:
            info["invoiceReferenceNumber"] = row.invoice_ref
        try:
            self.files.write_state(row, str(row.state), message, {**info, **(extra or {})})
        except OSError as exc:
            self.log.warning("outbox.state_file_failed", file=row.file_name, invoice=row.id, error=str(exc))


def _fresh(known: Sequence[InvoiceRow] | None, state: InvoiceState) -> Sequence[InvoiceRow] | None:
    """`known` when every row is in `state` (else None: the store reads the rows back)."""
    return known if known is not None and all(r.state == state for r in known) else None
