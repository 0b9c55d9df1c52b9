"""The optional per-invoice hook (issue #6 item 6) for ERPs that import a received invoice at once:
run a configured command with the delivered XML's path appended, and/or write a marker file
`<ksefNumber><suffix>` (e.g. `.ready`) beside it.

At least once: before a chunk of invoices is written, the chunk is noted as "hook pending" in the store
(kv namespace `inbox_hooks`); after the hooks ran the note is cleared. A run killed in between finds the
note at startup and runs the hooks of the invoices that were delivered (those that were not will be
delivered again, and noted again). So a hook may run twice around a crash, never zero times; a command
should be idempotent, a marker file is.

A failing or hanging command is reported (log and audit event) and not retried: the invoice is delivered,
and repeating an import the ERP rejected would not help. A command is stopped after `hook_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from ksefd import spool
from ksefd.config import ReceivingOptions
from ksefd.store import Store

log = structlog.get_logger("ksefd.daemon.hooks")

PENDING_NAMESPACE = "inbox_hooks"
OUTPUT_LIMIT = 2000          # characters of a failing command's output kept in the log


@dataclass(frozen=True)
class HookOutcome:
    ksef_number: str
    ok: bool
    detail: str = ""


class InvoiceHooks:
    """The hooks of one company; `enabled` is False when neither a command nor a marker is configured."""

    def __init__(self, company: str, options: ReceivingOptions, store: Store,
                 now: Callable[[], dt.datetime]) -> None:
        self.company = company
        self.command = options.hook_command
        self.marker_suffix = options.hook_marker_suffix
        self.timeout = options.hook_timeout_seconds
        self.store = store
        self.now = now
        self.runs = 0
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return bool(self.command) or self.marker_suffix is not None

    # -- the pending note ------------------------------------------------------------------------

    async def _pending(self) -> dict[str, str]:
        text = await self.store.kv.get(PENDING_NAMESPACE, self.company)
        return dict(json.loads(text)) if text else {}

    async def _save(self, pending: dict[str, str]) -> None:
        if pending:
            await self.store.kv.put(PENDING_NAMESPACE, self.company, json.dumps(pending, sort_keys=True))
        else:
            await self.store.kv.delete(PENDING_NAMESPACE, self.company)

    async def note(self, targets: list[tuple[str, Path]]) -> None:
        """Before writing: these invoices' hooks are due once they are delivered."""
        if not self.enabled:
            return
        pending = await self._pending()
        pending.update({number: str(path) for number, path in targets})
        await self._save(pending)

    async def fire(self, targets: list[tuple[str, Path]]) -> list[HookOutcome]:
        """After recording: run the hooks, then clear their note."""
        if not self.enabled:
            return []
        outcomes = [await self.run(number, path) for number, path in targets]
        pending = await self._pending()
        for number, _ in targets:
            pending.pop(number, None)
        await self._save(pending)
        return outcomes

    async def recover(self) -> list[HookOutcome]:
        """At startup: run the hooks a killed run left pending, for the invoices that were delivered."""
        pending = await self._pending()
        if not pending:
            return []
        delivered = await self.store.inbox.delivered_among(self.company, pending)
        due = [(number, Path(path)) for number, path in sorted(pending.items()) if number in delivered]
        log.info("inbox.hooks_recovered", company=self.company, due=len(due), dropped=len(pending) - len(due))
        outcomes = [await self.run(number, path) for number, path in due] if self.enabled else []
        await self._save({})
        return outcomes

    # -- running ---------------------------------------------------------------------------------

    async def run(self, ksef_number: str, xml_path: Path) -> HookOutcome:
        self.runs += 1
        outcome = HookOutcome(ksef_number, True)
        if self.marker_suffix is not None:
            outcome = await asyncio.to_thread(self._marker, ksef_number, xml_path)
        if outcome.ok and self.command:
            outcome = await self._command(ksef_number, xml_path)
        if not outcome.ok:
            self.failures += 1
            log.warning("inbox.hook_failed", company=self.company, ksef_number=ksef_number, detail=outcome.detail)
            await self.store.events.add(at=self.now(), kind="inbox_hook", company=self.company,
                                        detail={"ksefNumber": ksef_number, "error": outcome.detail})
        return outcome

    def _marker(self, ksef_number: str, xml_path: Path) -> HookOutcome:
        assert self.marker_suffix is not None
        try:
            spool.write_atomic(xml_path.with_name(ksef_number + self.marker_suffix), (xml_path.name + "\n").encode())
        except OSError as error:
            return HookOutcome(ksef_number, False, f"marker file not written: {error}")
        return HookOutcome(ksef_number, True)

    async def _command(self, ksef_number: str, xml_path: Path) -> HookOutcome:
        assert self.command
        argv = [*self.command, str(xml_path)]
        try:
            process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                           stdout=asyncio.subprocess.PIPE,
                                                           stderr=asyncio.subprocess.STDOUT)
        except OSError as error:
            return HookOutcome(ksef_number, False, f"cannot start {argv[0]}: {error}")
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return HookOutcome(ksef_number, False, f"{argv[0]} did not finish within {self.timeout:g} s; stopped")
        except BaseException:                 # cancelled (shutdown): do not leave the command running
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if process.returncode != 0:
            text = output.decode("utf-8", "replace")[-OUTPUT_LIMIT:].strip()
            return HookOutcome(ksef_number, False, f"{argv[0]} exited with {process.returncode}: {text}")
        return HookOutcome(ksef_number, True)
