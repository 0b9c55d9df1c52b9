"""Intake: from a file in the outbox to a queued invoice (issue #5 items 2 and 3).

Files are found three ways: a scan at startup, watchfiles events (watch.py), and a full rescan every
`rescan_interval_seconds` (network shares miss events). Only `*.xml` counts; `*.tmp`, dot-files and
`~$*` are ignored (spool.is_candidate). A file is claimed once its size and mtime have not changed for
`settle_seconds` (an ERP writing in place is never read half-written), by a rename into the outbox's
`.ksefd/` folder, so the ERP cannot change it under us and a crash cannot lose it:

    rename into .ksefd/<hex>.<NAME>  ->  local checks  ->  row (CLAIMED, with its facts)  ->  CHECKED -> QUEUED

A crash after the rename but before the row leaves an "orphan" working file; the next start adopts it.
The checks run before any KSeF quota is spent (ksefd.invoice.check_invoice). Two more are ksefd's own:

* the same bytes dropped again are never sent twice, and never refused either: ERPs re-export, and the ERP
  then waits for a result under the new name (issue #10 point 7). When the first copy is finished in KSeF
  (DONE), the re-drop is answered at once: `sent/NAME.xml` (its bytes), the original's UPO copied to
  `NAME.upo.xml` and `NAME.ksef.json` with the original's KSeF number plus `"redrop": true` and
  `"originalFile"`; the row becomes REDROP. The same name dropped again gets `NAME-2` (the original's result
  stays as it was). While the first copy is still on its way (queued, in KSeF, waiting for its UPO, on
  hold), the re-drop waits in CLAIMED, its state file saying so, and is answered the same way once the
  original is done; if the original ends rejected, the re-drop is then checked and sent as a new invoice
  (as a drop after a rejection always is). Files given back (RETURNED) or re-drops never count as originals;
* an invoice whose (seller NIP, type, P_2) ksefd already got accepted with different bytes is refused
  before KSeF would answer 440 (`duplicate-number`).

A different file under a name used before is simply a new invoice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksefd import heap, spool
from ksefd.clock import Clock, warsaw_today
from ksefd.config import Company
from ksefd.i18n import N_, _
from ksefd.invoice import CheckedInvoice, InvoiceRejected, check_invoice
from ksefd.ksef import sha256_b64
from ksefd.store import InvoiceRow, InvoiceState, NewInvoice

from ..failures import LastingFailure
from ..runtime import wait_for
from . import refusals
from .files import STATE_SUFFIX, OutboxFiles
from .ledger import Ledger
from .watch import OutboxWatcher

S = InvoiceState
CHUNK = 500
CHECK_THREADS = 2      # threads for a chunk's local checks (parsing overlaps; invoice/schema.py serialises the XSD)
SETTLED_STATES = frozenset({S.REJECTED, S.RETURNED, S.REDROP})   # never an "original" of a re-drop
REDROP_LOOK_SECONDS = 1.0      # while a re-drop waits for its original, intake looks this often
ACCEPTED_STATES = frozenset({S.ACCEPTED, S.UPO_SAVED, S.DONE})
DUPLICATE_NUMBER_HINT = N_("Give the invoice its own number (P_2); if it corrects the earlier one, issue a "
                           "correcting invoice (KOR) with a new number.")


@dataclass
class _Claimed:
    work: Path
    name: str
    data: bytes
    sha256: str
    checked: CheckedInvoice | None = None
    rejection: dict[str, Any] | None = None
    earlier: InvoiceRow | None = None      # an earlier invoice with these bytes (the original of a re-drop)
    redrop: bool = False                   # same bytes as `earlier`: answered from it, never sent
    refused: dict[str, Any] | None = None  # could not be read at all (refusals.py): moved, not processed


class Intake:
    def __init__(self, company: Company, ledger: Ledger, files: OutboxFiles, clock: Clock, *,
                 settle_seconds: float, rescan_interval_seconds: float, heavy: asyncio.Semaphore, log: Any) -> None:
        self.company = company
        self.ledger = ledger
        self.store = ledger.store
        self.files = files
        self.clock = clock
        self.settle_seconds = settle_seconds
        self.rescan_interval_seconds = rescan_interval_seconds
        self.heavy = heavy                 # CPU-heavy work shared by all companies (the local checks)
        self.log = log
        self.outbox = company.folders.outbox
        self.stability = spool.StabilityTracker(clock, settle_seconds)
        self.poke = asyncio.Event()
        self.pending = 0            # candidates seen but not yet stable
        self._looking = False       # looking, claiming, checking (`busy`)
        self.redrops_waiting = 0    # re-drops waiting for their original to finish
        # Entries refused and left in the outbox (they could not be moved): name -> what they were when told,
        # so that each is told once, not at every scan (refusals.py).
        self.left_in_place: dict[str, tuple[int, int, int]] = {}

    # --- loops ----------------------------------------------------------------------------------

    async def run(self, draining: asyncio.Event, watcher: OutboxWatcher | None = None) -> None:
        """Claim what is dropped until `draining`. `watcher`: the daemon's one watcher of every outbox, which
        pokes this intake (watch.py); without it, this intake watches its own outbox."""
        failing = LastingFailure(self.log, "outbox.intake_failed")
        try:
            rows = await self.store.invoices.in_state(self.company.name, S.CLAIMED, S.CHECKED, S.QUEUED)
            self.ledger.show_later([r for r in rows if r.state == S.QUEUED])   # owed when a kill -9 came (ledger)
            await self.recheck([r for r in rows if r.state != S.QUEUED])
            await self.adopt_orphans()
            await self.clear_stale_states()
        except Exception as exc:   # e.g. an unreadable orphan: logged, the loop below tries the outbox anyway
            failing.failed(error=repr(exc), where=traceback.format_exc(limit=-3))
        stop_watch = asyncio.Event()
        orphans_possible, outbox_seen = False, await asyncio.to_thread(_identity, self.outbox)
        async with asyncio.TaskGroup() as group:
            if watcher is None:
                watcher = OutboxWatcher()
                watcher.register(self.outbox, self.poke)
                group.create_task(watcher.run(stop_watch))
            try:
                while not draining.is_set():
                    # A failure here (a network share gone, a file that cannot be read or moved) must not take
                    # the company's sending down with it (issue #15): logged when it starts, slowly while it
                    # lasts and when it clears; the chunk's claimed files are checked again.
                    try:
                        await self.scan_once()
                        # Files claimed just before a failure (the ERP's share gone between the renames and the
                        # folder's fsync) wait without rows in the working folder, which lives in the outbox
                        # (runtime.work_dir) and comes back with it: adopted after a failure and whenever the
                        # outbox is another folder than at the last look, not only at the next start.
                        seen = await asyncio.to_thread(_identity, self.outbox)
                        if orphans_possible or seen != outbox_seen:
                            await self.adopt_orphans()
                            orphans_possible, outbox_seen = False, seen
                        await self.settle_redrops()
                        failing.cleared()
                    except Exception as exc:
                        failing.failed(error=repr(exc), where=traceback.format_exc(limit=-3))
                        orphans_possible = True
                        self.pending = 0
                        with contextlib.suppress(Exception):
                            await self.recheck(await self.store.invoices.in_state(self.company.name, S.CLAIMED))
                    interval = watcher.rescan_interval(self.outbox, self.rescan_interval_seconds)
                    if self.pending:
                        interval = min(interval, max(self.settle_seconds / 2, 0.05))
                    if self.redrops_waiting:
                        interval = min(interval, REDROP_LOOK_SECONDS)
                    await wait_for(self.poke, self.clock, interval)
            finally:
                stop_watch.set()

    async def scan_once(self) -> int:
        """Look at the outbox once; claim, check and queue every finished file. Returns how many.

        Busy from the look itself: while an ERP is still renaming a large drop in, the first look sees only the
        first few dozen files, and the dispatcher must not send those online (30 a minute, PROTOCOL.md §7) in
        the moment between that look and the next one, which finds the rest (a 10 000 drop sent 34 online)."""
        self._looking = True
        try:
            return await self._scan_once()
        finally:
            self._looking = False

    @property
    def busy(self) -> bool:
        """Looking, claiming, checking, or told of new files since (the watcher's poke not taken yet): the
        dispatcher waits to see a drop whole. Files renamed in during a look are the next look's, and between
        the two the part already queued must not be sent online as a trickle (a 25-file drop went online)."""
        return self._looking or self.poke.is_set()

    async def _scan_once(self) -> int:
        odd: list[tuple[Path, str]] = []
        try:
            candidates = await asyncio.to_thread(spool.scan, self.outbox, odd)
        except FileNotFoundError:
            self.outbox.mkdir(parents=True, exist_ok=True)
            return 0
        for path, kind in odd:
            if not self._told_before(path):
                await self._refuse(path, path.name, refusals.not_a_file(path.name, kind))
        for path in [p for p in candidates if not _utf8(p.name)]:
            shown = _shown_name(path.name)
            await self._refuse(path, shown, refusals.name_not_utf8(shown))
        candidates = [p for p in candidates if _utf8(p.name) and not self._told_before(p)]
        self.stability.retain(candidates)
        stable = [p for p in candidates if self.stability.is_stable(p)]
        self.pending = len(candidates) - len(stable)
        done = 0
        for start in range(0, len(stable), CHUNK):
            done += await self._take([p for p in stable[start:start + CHUNK]])
        if done:
            self.log.info("outbox.intake", claimed=done, waiting_to_settle=self.pending)
        return done

    # --- one chunk ------------------------------------------------------------------------------------

    async def _take(self, paths: list[Path]) -> int:
        taken = await asyncio.to_thread(self._claim_all, paths)
        for path, _work in taken:
            self.stability.forget(path)
        claimed = await asyncio.to_thread(self._read_all, taken)     # one thread hop for the chunk, not one per file
        await self._process(claimed)
        heap.give_back()     # the chunk's bytes and parsed trees, freed in worker threads' arenas (ksefd.heap)
        return len(claimed)

    def _told_before(self, path: Path) -> bool:
        """An entry refused earlier and left in place, unchanged since (it is not claimed or told again)."""
        told = self.left_in_place.get(path.name)
        if told is None:
            return False
        try:
            info = os.lstat(path)
        except OSError:
            del self.left_in_place[path.name]
            return False
        if (info.st_ino, info.st_mtime_ns, info.st_mode) == told:
            return True
        del self.left_in_place[path.name]
        return False

    async def _refuse(self, source: Path, name: str, error: dict[str, Any]) -> None:
        """An entry that cannot be an invoice at all (refusals.py): into rejected/ as it is, with its error file,
        or, when it cannot be moved there, back where the ERP left it with NAME.error.json beside it. Either
        way a REJECTED row, so `ksefd status` shows it; nothing here may stop the company."""
        try:
            stem = await asyncio.to_thread(self.files.move_rejected, source, name, error)
            where = "rejected"
            if stem is not None and source.parent == self.files.work_dir:
                self.files.discard_path(source)       # its name sidecar, if any
            if stem is None:
                where = await asyncio.to_thread(self._leave_in_place, source, name, error)
                if where == "told-before":
                    return
            row = (await self.store.invoices.add_many(self.company.name, [
                NewInvoice(name, sha256_b64(b""), 0, {"file": name}, {})]))[0]
            await self.store.invoices.transition(row.id, S.CLAIMED, S.REJECTED, detail=error, last_error=error,
                                                 result_name=stem)
            self.log.warning("outbox.refused", file=name, code=error.get("code"), rejected_as=stem, left=where)
            self.ledger.dispatch_due.set()
        except Exception as exc:      # told in the log; the entry stays where it is
            self.log.error("outbox.refuse_failed", file=name, code=error.get("code"), error=str(exc))

    def _leave_in_place(self, source: Path, name: str, error: dict[str, Any]) -> str:
        """The entry stays in (or goes back to) the outbox; NAME.error.json beside it. "told-before" when that
        error file already says exactly this (the same entry found again after a restart)."""
        target = self.outbox / name
        if source != target:
            if os.path.lexists(target):       # the ERP dropped a new file meanwhile: keep ours hidden, say so
                raise OSError(f"cannot put {name!r} back into the outbox (the name is taken again)")
            os.rename(source, target)
            self.files.discard_path(source)   # its name sidecar, if any
        info = os.lstat(target)
        self.left_in_place[name] = (info.st_ino, info.st_mtime_ns, info.st_mode)
        beside = self.files.error_beside(name)
        body = spool.json_bytes(error)
        if spool.same_content(beside, body):
            return "told-before"
        spool.write_atomic(beside, body)
        return "outbox"

    def _claim_all(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        """Claim a chunk by renames, then make them durable with one fsync of each folder, before any row
        names a working file: a power cut before that puts the files back in the outbox, nothing else."""
        taken = []
        for path in paths:
            try:
                work = self.files.new_work_path(path.name)
                if spool.claim(path, work, sync_dir=False):
                    taken.append((path, work))     # else gone, or still locked by its writer (Windows)
                else:
                    self.files.discard_path(work)  # its name sidecar, if one was written
            except OSError as exc:                 # this file only; it stays in the outbox, tried at the next scan
                self.log.error("outbox.claim_failed", file=path.name, error=str(exc))
        if taken:
            spool.fsync_directory(self.files.work_dir)
            spool.fsync_directory(self.outbox)
        return taken

    @staticmethod
    def _read_all(taken: list[tuple[Path, Path]]) -> list[_Claimed]:
        """The chunk's claimed files read in one thread hop; a file that cannot be read is that file's
        refusal, never the chunk's (issue #15)."""
        return [_read_claimed(work, path.name) for path, work in taken]

    async def adopt_orphans(self) -> None:
        """Working files without a row: claimed just before a crash. They continue as if just dropped; a
        working file whose invoice is already finished (crash before it was discarded) is discarded."""
        files = self.files.work_files()
        if not files:
            return
        known = await self.store.invoices.work_paths(self.company.name)
        orphans = []
        for path in files:
            state = known.get(str(path))
            if state is None:
                orphans.append(path)
            elif state in (S.DONE, S.REJECTED, S.REDROP):     # its bytes are safe in sent/ or rejected/
                path.unlink(missing_ok=True)
        if orphans:
            self.log.info("outbox.orphans_adopted", count=len(orphans))
            await self._process([await asyncio.to_thread(_read_claimed, p, self.files.original_name(p))
                                 for p in orphans])

    async def clear_stale_states(self) -> None:
        """State files of invoices that finished just before a crash (the row was, the file not yet, updated)."""
        for path in self.outbox.glob(f"*{STATE_SUFFIX}"):
            try:
                invoice_id = json.loads(path.read_bytes()).get("invoiceId")
            except (OSError, ValueError):
                continue
            row = await self.store.invoices.get(invoice_id) if isinstance(invoice_id, int) else None
            if row is None or row.state in (S.DONE, S.REJECTED, S.REDROP, S.RETURNED):
                path.unlink(missing_ok=True)

    async def settle_redrops(self) -> None:
        """Re-drops waiting in CLAIMED: answered once their original is done (in this task, so never at the
        same time as a chunk's own moves)."""
        if not self.redrops_waiting:
            return
        await self.recheck(await self.store.invoices.in_state(self.company.name, S.CLAIMED))

    async def recheck(self, rows: list[InvoiceRow]) -> None:
        """Rows left CLAIMED or CHECKED by a crash, and re-drops waiting for their original: finish their
        intake."""
        self.redrops_waiting = 0
        for row in rows:
            if row.state == S.CHECKED:
                await self.ledger.move(row, S.QUEUED)
                continue
            data = self.files.read_work(row)
            if data is None:
                continue
            item = _Claimed(Path(row.work_path or ""), row.file_name, data, row.sha256)
            await self._judge(item, exclude=row.id)
            await self._finish_row(row, item)

    # --- checks and rows --------------------------------------------------------------------------------

    async def _process(self, items: list[_Claimed]) -> None:
        for item in items:
            if item.refused is not None:
                await self._refuse(item.work, item.name, item.refused)
        items = [item for item in items if item.refused is None]
        if not items:
            return
        first_of: dict[str, int] = {}          # hash -> the chunk's first item with those bytes
        copies: dict[int, int] = {}            # item index -> index of the earlier item with the same bytes
        for index, item in enumerate(items):
            if item.sha256 in first_of:        # dropped twice in one chunk: the second is the duplicate
                copies[index] = first_of[item.sha256]
            else:
                first_of[item.sha256] = index
        async with self.heavy:
            await self._judge_all([item for index, item in enumerate(items) if index not in copies])
        # One commit for the chunk's rows (they all start CLAIMED, as with one row at a time).
        rows = await self.store.invoices.add_many(self.company.name, [
            NewInvoice(item.name, item.sha256, len(item.data), {"file": item.name}, self._facts(item))
            for item in items])
        for index, first in copies.items():     # the oldest with these bytes, as one at a time would find
            items[index].redrop = True
            items[index].earlier = items[first].earlier if items[first].redrop else rows[first]
        for row, item in zip(rows, items, strict=True):
            if item.checked is None:
                await self._finish_row(row, item)
        good = [r for r, i in zip(rows, items, strict=True) if i.checked is not None]
        if good:
            await self.ledger.move_many([r.id for r in good], S.CLAIMED, S.QUEUED, through=S.CHECKED, known=good,
                                        show_later=True)

    @staticmethod
    def _facts(item: _Claimed) -> dict[str, Any]:
        fields: dict[str, Any] = {"work_path": str(item.work)}
        if item.checked is not None:
            c = item.checked
            fields.update(seller_nip=c.seller_nip, invoice_type=c.invoice_type, invoice_number=c.invoice_number,
                          issue_date=c.issue_date, has_attachment=c.has_attachment)
        return fields

    async def _finish_row(self, row: InvoiceRow, item: _Claimed) -> None:
        if item.redrop:
            await self._answer_redrop(row, item)
            return
        if item.rejection is not None:
            await self.ledger.reject(row, item.rejection, from_state=S.CLAIMED)
            return
        assert item.checked is not None
        c = item.checked
        if row.seller_nip is None:
            row = await self.ledger.update(row, seller_nip=c.seller_nip, invoice_type=c.invoice_type,
                                           invoice_number=c.invoice_number, issue_date=c.issue_date,
                                           has_attachment=c.has_attachment)
        await self.ledger.move_many([row.id], S.CLAIMED, S.QUEUED, through=S.CHECKED)

    async def _answer_redrop(self, row: InvoiceRow, item: _Claimed) -> None:
        original = item.earlier
        assert original is not None
        if original.state == S.DONE:
            await self.ledger.redrop(row, original, item.data)
            return
        self.redrops_waiting += 1
        self.ledger.show(row, {"redropOf": original.file_name, "message": _(
            "the same bytes as {file}, which KSeF has not finished yet (state {state}); not sent again: its result "
            "is copied under this name once it is done", file=repr(original.file_name), state=str(original.state))})
        self.log.info("outbox.redrop_waiting", file=row.file_name, original=original.file_name,
                      original_state=str(original.state))

    async def _judge(self, item: _Claimed, exclude: int | None = None) -> None:
        if not await self._same_bytes_before(item, exclude):
            self._check(item, warsaw_today(self.clock))
            await self._number_taken(item, exclude)

    async def _judge_all(self, items: list[_Claimed]) -> None:
        """`_judge` for a chunk: the local checks (CPU: the XSD) in worker threads, a few hundred per hop."""
        # The same lookups as `_judge`, one query per few hundred files instead of two per file.
        earlier = await self.store.invoices.find_by_hashes(self.company.name, [item.sha256 for item in items])
        fresh = [item for item in items if not self._seen_before(item, earlier.get(item.sha256, []))]
        today = warsaw_today(self.clock)
        halves = [fresh[i::CHECK_THREADS] for i in range(CHECK_THREADS)]
        await asyncio.gather(*(asyncio.to_thread(self._check_many, half, today) for half in halves if half))
        keys = [(c.seller_nip, c.invoice_type, c.invoice_number) for c in (i.checked for i in fresh) if c is not None]
        holders = await self.store.invoices.find_by_keys(keys) if keys else {}
        for item in fresh:
            c = item.checked
            if c is not None:
                self._number_held(item, c, holders.get((c.seller_nip, c.invoice_type, c.invoice_number), []))

    async def _same_bytes_before(self, item: _Claimed, exclude: int | None = None) -> bool:
        """An earlier invoice with these bytes on its way to KSeF or accepted: then this is a re-drop. Rows
        at rest in CLAIMED are re-drops waiting themselves (or a crash's leftovers, rechecked in order),
        never originals: the oldest of them becomes the original once it is checked and queued."""
        return self._seen_before(item, await self.store.invoices.find_by_hash(self.company.name, item.sha256),
                                 exclude)

    @staticmethod
    def _seen_before(item: _Claimed, rows: list[InvoiceRow], exclude: int | None = None) -> bool:
        """`_same_bytes_before` on rows already looked up (a chunk's lookups are one query: find_by_hashes)."""
        originals = [r for r in rows if r.id != exclude and r.state not in SETTLED_STATES and r.state != S.CLAIMED]
        if originals:
            item.earlier = originals[0]
            item.redrop = True
        return bool(originals)

    def _check_many(self, items: list[_Claimed], today: dt.date) -> None:
        for item in items:
            self._check(item, today)

    def _check(self, item: _Claimed, today: dt.date) -> None:
        try:
            item.checked = check_invoice(item.data, file_name=item.name, company_nip=self.company.nip,
                                         today=today)
        except InvoiceRejected as rejected:
            item.rejection = {**rejected.to_dict(), "file": item.name, "invoiceHash": item.sha256}
        except Exception as exc:      # a bug in a check must reject this file, not stop the company
            item.rejection = {**refusals.check_failed(item.name, exc), "invoiceHash": item.sha256}

    async def _number_taken(self, item: _Claimed, exclude: int | None = None) -> None:
        c = item.checked
        if c is None:
            return
        self._number_held(item, c, await self.store.invoices.find_by_key(c.seller_nip, c.invoice_type,
                                                                          c.invoice_number), exclude)

    @staticmethod
    def _number_held(item: _Claimed, c: CheckedInvoice, rows: list[InvoiceRow], exclude: int | None = None) -> None:
        taken = [r for r in rows if r.id != exclude and r.state in ACCEPTED_STATES and r.sha256 != item.sha256]
        if taken:
            item.checked, item.rejection = None, _duplicate_number(item, c, taken[0])


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which folder is at `folder` (device, inode): a share mounted again or a folder put back is another one."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _utf8(name: str) -> bool:
    """A name that UTF-8 can hold (the state database, JSON and KSeF need that); on Linux a name is any bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown_name(name: str) -> str:
    """A name that is not UTF-8, with U+FFFD for each byte that is not (how a file manager shows it)."""
    return os.fsencode(name).decode("utf-8", "replace")


def _duplicate_number(item: _Claimed, checked: CheckedInvoice, earlier: InvoiceRow) -> dict[str, Any]:
    return {"stage": "local-check", "code": "duplicate-number",
            "message": _("Invoice number {number} ({type}) of seller {nip} is already in KSeF as {ksef_number} (file "
                         "{file}) with different content; KSeF would refuse it as a duplicate (440).",
                         number=repr(checked.invoice_number), type=str(checked.invoice_type),
                         nip=str(checked.seller_nip), ksef_number=str(earlier.ksef_number),
                         file=repr(earlier.file_name)),
            "details": {"earlierFile": earlier.file_name, "ksefNumber": earlier.ksef_number},
            "hint": DUPLICATE_NUMBER_HINT, "file": item.name, "invoiceHash": item.sha256}


def _read_claimed(work: Path, name: str) -> _Claimed:
    try:
        data = refusals.read_claimed(work)
    except refusals.NotAFile as exc:
        return _Claimed(work, name, b"", "", refused=refusals.not_a_file(name, exc.kind))
    except OSError as exc:        # not readable by ksefd's user, or an I/O error: this file only (issue #15)
        return _Claimed(work, name, b"", "", refused=refusals.unreadable(name, exc))
    return _Claimed(work, name, data, sha256_b64(data))
