"""A company switched to `send = false` (issue #10 point 2): what ksefd had claimed but not sent goes back.

At start-up, for every company whose config says `send = false`, each invoice KSeF has never seen
(store/states.py RETURNABLE_STATES: claimed, checked, queued, deferred, held) has its working file renamed
from `outbox/.ksefd/` back to `outbox/` under its original name, bytes untouched, and its row becomes
RETURNED, so it is never sent by a later run either (dropping the file again while sending is on starts a
new invoice). Working files without a row (claimed just before a crash) go back too. Invoices already in
KSeF (submitting, in doubt, processing) are left as they are: they finish when sending is switched on again.
`ksefd status` says that sending is off.
"""

from __future__ import annotations

import asyncio

import structlog

from ksefd.config import Company
from ksefd.store.states import RETURNABLE_STATES

from ..runtime import Runtime
from .files import OutboxFiles
from .ledger import Ledger

log = structlog.get_logger("ksefd.daemon.outbox")


async def return_unsent(runtime: Runtime, company: Company) -> int:
    """Give back the company's claimed-but-unsent files; returns how many went back."""
    files = OutboxFiles(company, runtime.work_dir(company))
    if not files.work_dir.is_dir():
        return 0
    bound = log.bind(company=company.name)
    ledger = Ledger(company.name, runtime.store, files, runtime.clock.now, bound)
    rows = await runtime.store.invoices.in_state(company.name, *RETURNABLE_STATES)
    for row in rows:
        await ledger.give_back(row)
    known = await runtime.store.invoices.work_paths(company.name)
    orphans = [path for path in files.work_files() if str(path) not in known]
    for path in orphans:
        name = await asyncio.to_thread(files.return_file, path, files.original_name(path))
        bound.info("outbox.returned_to_outbox", file=name, orphan=True)
    if rows or orphans:
        bound.warning("outbox.sending_off_returned", files=len(rows) + len(orphans),
                      message="send = false: claimed files were put back into outbox/ unsent")
    return len(rows) + len(orphans)
