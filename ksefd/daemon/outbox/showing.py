"""State files written late (issue #16): a closed batch's invoices say SUBMITTING only once KSeF has had them for
`after` seconds (batch.SHOW_AFTER). A backlog's batch done sooner creates no state file per invoice that lives a
second; on ext4 a file's creation is its largest kernel cost (2-300 us on the shared 2-core machine).

The clock starts at the close, so a closed piece that waits for its turn to have its results read (batch.
RESULTS_AT_ONCE) says SUBMITTING meanwhile too. The files are written in a worker thread beside the wait and
stopped before any result is handled (`stop`: the file being written is finished first), so never after an
invoice's end; SQLite holds the SUBMITTING step all along, committed before the upload.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ksefd.store import InvoiceRow

from .ledger import Ledger


class LateShow:
    def __init__(self, ledger: Ledger, rows: list[InvoiceRow], extra: dict[str, Any], after: float) -> None:
        self.ledger = ledger
        self.rows = rows            # held until `stop` (a piece: 2 500 rows, ~2 MB)
        self.extra = extra
        self.halt = threading.Event()
        self.writing = False
        self.task = asyncio.ensure_future(self._run(after))

    async def _run(self, after: float) -> None:
        await asyncio.sleep(after)
        self.writing = True
        await self.ledger.show_many(self.rows, self.extra, stop=self.halt)

    async def show_all(self) -> None:
        """The session waits for a later round: every file says so now (or once the writes under way end)."""
        if not self.writing:
            self.task.cancel()
            await asyncio.wait({self.task})
            self.writing = True
            await self.ledger.show_many(self.rows, self.extra)
        else:
            await asyncio.wait({self.task})

    async def stop(self) -> None:
        """No more files from here on; returns once the thread writing them (if any) has stopped."""
        self.halt.set()
        if not self.writing:
            self.task.cancel()
        await asyncio.wait({self.task})
        self.rows.clear()           # in place: the callers' frames that passed the list in hold it too
