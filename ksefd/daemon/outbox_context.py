"""What the parts of one company's outbox pipeline share (intake, sending, tracking)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import structlog

from ksefd.config import Company
from ksefd.ksef.client import KsefContext
from ksefd.ksef.environments import environment
from ksefd.store import InvoiceRow, InvoiceState, Store

from .credentials import Connection
from .outbox_files import OutboxFiles
from .runtime import Runtime

# What the state file tells a person while an invoice waits.
STATE_MESSAGES: dict[InvoiceState, str] = {
    InvoiceState.CLAIMED: "received by ksefd; being checked",
    InvoiceState.CHECKED: "passed the local checks",
    InvoiceState.QUEUED: "waiting to be sent to KSeF",
    InvoiceState.SUBMITTING: "being sent to KSeF",
    InvoiceState.IN_DOUBT: "sent to KSeF, the answer was lost; ksefd is asking KSeF what happened",
    InvoiceState.PROCESSING: "in KSeF, waiting for its KSeF number",
    InvoiceState.ACCEPTED: "accepted by KSeF; fetching its UPO",
    InvoiceState.UPO_SAVED: "accepted by KSeF; UPO saved",
    InvoiceState.DEFERRED: "waiting to be retried after a temporary failure",
    InvoiceState.HELD: "on hold: the company needs a person's attention (see ksefd status)",
}


@dataclass
class CompanyCtx:
    runtime: Runtime
    company: Company
    files: OutboxFiles
    connection: Connection | None = None
    kick: asyncio.Event = field(default_factory=asyncio.Event)          # wakes the dispatcher
    track: asyncio.Event = field(default_factory=asyncio.Event)         # wakes the tracker
    reserved: set[int] = field(default_factory=set)                      # invoices a send task holds
    intake_busy: bool = False
    log: Any = None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = structlog.get_logger("ksefd.daemon.outbox").bind(company=self.company.name)

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def name(self) -> str:
        return self.company.name

    @property
    def context(self) -> KsefContext:
        if self.connection is None:
            raise RuntimeError(f"company {self.company.name} is not connected to KSeF")
        return self.connection.context

    @property
    def features(self) -> tuple[str, ...]:
        """On TEST and DEMO, ask for the NIP checksum checks PROD always makes (PROTOCOL.md §14.3), so an
        invoice PROD would refuse (450) is refused there too, before it reaches production."""
        return ("subject-identifier-validation",) if self.company.environment in ("test", "demo") else ()

    @property
    def qr_host(self) -> str:
        return environment(self.company.environment, self.company.base_url).qr_url

    def now(self) -> dt.datetime:
        return self.runtime.clock.now()

    def wake(self) -> None:
        self.kick.set()
        self.track.set()

    def show(self, row: InvoiceRow, extra: dict[str, Any] | None = None) -> None:
        """Rewrite the invoice's state file (informational; a failure to write it is logged, not fatal)."""
        self._write_state(row, extra, self.now())

    async def show_many(self, rows: list[InvoiceRow], extra: dict[str, Any] | None = None,
                        extras: list[dict[str, Any]] | None = None) -> None:
        """`show` for a group (a batch's invoices after one commit), in a worker thread: thousands of small
        file replacements must not stall the event loop. `extras[i]` adds to row i's file."""
        now = self.now()

        def write_all() -> None:
            for i, row in enumerate(rows):
                self._write_state(row, {**(extra or {}), **(extras[i] if extras else {})}, now)

        if rows:
            await asyncio.to_thread(write_all)

    def _write_state(self, row: InvoiceRow, extra: dict[str, Any] | None, now: dt.datetime) -> None:
        message = STATE_MESSAGES.get(row.state, str(row.state))
        info: dict[str, Any] = {"updatedAt": now.isoformat()}
        if row.next_attempt_at is not None and row.state in (InvoiceState.DEFERRED, InvoiceState.QUEUED):
            info["nextAttemptAt"] = row.next_attempt_at.isoformat()
        if row.last_error:
            info["lastError"] = row.last_error
        if row.invoice_ref:
            info["invoiceReferenceNumber"] = row.invoice_ref
        try:
            self.files.write_state(row, str(row.state), message, {**info, **(extra or {})})
        except OSError as exc:
            self.log.warning("outbox.state_file_failed", file=row.file_name, error=str(exc))
