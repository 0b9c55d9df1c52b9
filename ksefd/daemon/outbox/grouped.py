"""One step of many concurrent online sends in one commit (issue #16).

Up to ten online sends run at once, and each moves its invoice twice: to SUBMITTING before its POST (the
intent, committed before the bytes can reach KSeF: DESIGN.md "exactly once") and to PROCESSING after the
answer. One transaction each was two fsyncs per invoice on the one SQLite connection every task shares.
`GroupedMove` commits the steps that arrive while a commit is running together in the next one, as the rate
limiter's journal does with its grants (ksef/ratelimit_journal.GroupCommit): a lone send waits for nothing
more than its own commit, and every caller returns only once a transaction holding its own step committed.

One committer may carry several kinds of step (`move(change, step=(from, to))`): the online channel's intents
and answers go together, so ten sends in flight cost about one commit per round of them, not two (issue #16
goal 5; each commit is five round trips to the database thread and an fsync).

All or nothing would let one invoice that another task moved meanwhile (StateConflict) fail the group, so
then each step is tried on its own and only that invoice's caller gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from ksefd.store import Change, InvoiceRow, InvoiceState, StateConflict

from .ledger import Ledger

Step = tuple[InvoiceState, InvoiceState]


@dataclass(eq=False)
class _Waiting:
    step: Step
    change: Change
    known: InvoiceRow | None
    done: asyncio.Future[InvoiceRow]


class GroupedMove:
    """`await move(change)`: the invoice from `from_state` to `to_state` with its fields (ledger.move_each);
    `move(change, step=(from, to))` for another step in the same commits. `known`: the invoice as the caller
    has it, fresh (only its task writes it), so the moved row is built from it instead of read back."""

    def __init__(self, ledger: Ledger, from_state: InvoiceState | None = None,
                 to_state: InvoiceState | None = None) -> None:
        self.ledger = ledger
        self.step = (from_state, to_state) if from_state is not None and to_state is not None else None
        self._waiting: list[_Waiting] = []
        self._lock = asyncio.Lock()
        self.commits = 0            # for tests: transactions the steps took

    async def move(self, change: Change, *, step: Step | None = None, known: InvoiceRow | None = None
                   ) -> InvoiceRow:
        step = step or self.step
        if step is None:
            raise ValueError("GroupedMove.move: which step (from, to)?")
        done: asyncio.Future[InvoiceRow] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(step, change, known, done))
        async with self._lock:
            if not done.done():
                group, self._waiting = self._waiting, []
                with contextlib.suppress(Exception):     # each caller hears its own outcome from `done`
                    await self._commit(group)
        return await done

    async def _commit(self, group: list[_Waiting]) -> None:
        steps: dict[Step, list[_Waiting]] = {}
        for item in group:
            steps.setdefault(item.step, []).append(item)
        parts = [([i.change for i in items], from_state, to_state,
                  None if any(i.known is None for i in items) else [i.known for i in items if i.known is not None])
                 for (from_state, to_state), items in steps.items()]
        try:
            moved = await self.ledger.move_groups(parts)
        except StateConflict as conflict:
            if len(group) == 1:
                _fail(group[0].done, conflict)
                return
            for number, item in enumerate(group):      # on their own: only the one moved meanwhile fails
                try:
                    await self._commit([item])
                except BaseException as exc:
                    for later in group[number + 1:]:
                        _fail(later.done, exc)
                    raise
            return
        except BaseException as exc:          # nothing committed (or cancelled): every caller in the group hears it
            for item in group:
                _fail(item.done, exc)
            raise
        self.commits += 1
        by_id = {row.id: row for rows in moved for row in rows}
        for item in group:
            if not item.done.done():
                item.done.set_result(by_id[item.change.invoice_id])


def _fail(done: asyncio.Future[InvoiceRow], exc: BaseException) -> None:
    if done.done():
        return
    if isinstance(exc, asyncio.CancelledError):   # the daemon is stopping: the send tasks all are cancelled
        done.cancel()
    else:
        done.set_exception(exc)
