"""One step of many concurrent online sends in one commit (issue #16).

Up to ten online sends run at once, and each moves its invoice twice: to SUBMITTING before its POST (the
intent, committed before the bytes can reach KSeF: DESIGN.md "exactly once") and to PROCESSING after the
answer. One transaction each was two fsyncs per invoice on the one SQLite connection every task shares.
`GroupedMove` commits the steps that arrive while a commit is running together in the next one, as the rate
limiter's journal does with its grants (ksef/ratelimit_journal.GroupCommit): a lone send waits for nothing
more than its own commit, and every caller returns only once a transaction holding its own step committed.

All or nothing would let one invoice that another task moved meanwhile (StateConflict) fail the group, so
then each step is tried on its own and only that invoice's caller gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib

from ksefd.store import Change, InvoiceRow, InvoiceState, StateConflict

from .ledger import Ledger


class GroupedMove:
    """`await move(change)`: the invoice from `from_state` to `to_state` with its fields (ledger.move_each)."""

    def __init__(self, ledger: Ledger, from_state: InvoiceState, to_state: InvoiceState) -> None:
        self.ledger = ledger
        self.from_state = from_state
        self.to_state = to_state
        self._waiting: list[tuple[Change, asyncio.Future[InvoiceRow]]] = []
        self._lock = asyncio.Lock()
        self.commits = 0            # for tests: transactions the steps took

    async def move(self, change: Change) -> InvoiceRow:
        done: asyncio.Future[InvoiceRow] = asyncio.get_running_loop().create_future()
        self._waiting.append((change, done))
        async with self._lock:
            if not done.done():
                group, self._waiting = self._waiting, []
                with contextlib.suppress(Exception):     # each caller hears its own outcome from `done`
                    await self._commit(group)
        return await done

    async def _commit(self, group: list[tuple[Change, asyncio.Future[InvoiceRow]]]) -> None:
        try:
            rows = await self.ledger.move_each([change for change, _ in group], self.from_state, self.to_state)
        except StateConflict as conflict:
            if len(group) == 1:
                _fail(group[0][1], conflict)
                return
            for number, item in enumerate(group):      # on their own: only the one moved meanwhile fails
                try:
                    await self._commit([item])
                except BaseException as exc:
                    for _, done in group[number + 1:]:
                        _fail(done, exc)
                    raise
            return
        except BaseException as exc:          # nothing committed (or cancelled): every caller in the group hears it
            for _, done in group:
                _fail(done, exc)
            raise
        self.commits += 1
        by_id = {row.id: row for row in rows}
        for change, done in group:
            if not done.done():
                done.set_result(by_id[change.invoice_id])


def _fail(done: asyncio.Future[InvoiceRow], exc: BaseException) -> None:
    if done.done():
        return
    if isinstance(exc, asyncio.CancelledError):   # the daemon is stopping: the send tasks all are cancelled
        done.cancel()
    else:
        done.set_exception(exc)
