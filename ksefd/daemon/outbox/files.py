"""The files an ERP reads (DESIGN.md, folder contract; issue #5 item 5).

* accepted: `sent/NAME.xml` (the exact bytes sent), `NAME.ksef.json`, `NAME.upo.xml`;
* rejected: `rejected/NAME.xml` (the original bytes, untouched) and `NAME.error.json`;
* waiting: `outbox/NAME.state.json`, rewritten at each step and removed once the invoice is finished.

A name used again by a different invoice gets `NAME-2`, `NAME-3`, ... (spool.unique_stem), so a stem and
its companions always describe one invoice. Every result write is atomic and safe to repeat after a crash:
the same bytes land on the same stem. The state file is informational and rebuilt at every step, so it is
replaced atomically (temp + rename) without an fsync: a crash may leave an older state, never a torn one,
and an fsync per step would cost more than the invoice's whole KSeF round trip in a large batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import msgspec

from ksefd import spool, spool_group
from ksefd.config import Company
from ksefd.store import InvoiceRow

from ..error_text import localize

STATE_SUFFIX = ".state.json"
STATE_READ = 16384         # a state file is a few hundred bytes (a long error: a few kB); more is read on
NAME_SIDECAR = ".name"      # .<16 hex>.name in the claim folder: the whole name of a shortened working file


class OutboxFiles:
    def __init__(self, company: Company, work_dir: Path) -> None:
        self.company = company
        self.folders = company.folders
        self._outbox = str(company.folders.outbox)      # state file names are built by the thousand
        self._sent = str(company.folders.sent)
        self.work_dir_name = str(work_dir)
        self.work_dir = work_dir

    def prepare(self) -> None:
        for folder in (self.folders.outbox, self.folders.sent, self.folders.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        spool.ensure_private_dir(self.work_dir)     # claimed invoices: only ksefd reads them (issue #15 point 7)
        for folder in (self.folders.outbox, self.folders.sent, self.folders.rejected, self.work_dir):
            spool.remove_stale_temps(folder)
        self.remove_stale_sidecars()

    # --- claimed files ----------------------------------------------------------------------------

    def new_work_path(self, name: str) -> Path:
        """`<16 hex>.<original name>`: unique, and the original name survives a crash before the row exists.
        A name too long for that (it would pass the file system's 255 bytes, issue #15 point 1) is shortened
        (spool.bounded_name), and the whole name is kept in a sidecar `.<16 hex>.name` written first."""
        token = secrets.token_hex(8)
        short = spool.bounded_name(name)
        if short != name:
            spool.write_atomic(self.work_dir / f".{token}{NAME_SIDECAR}", name.encode("utf-8", "surrogateescape"),
                               sync_dir=False, mode=spool.PRIVATE_FILE)
        return self.work_dir / f"{token}.{short}"

    @staticmethod
    def original_name(work_path: Path) -> str:
        token, dot, name = work_path.name.partition(".")
        with contextlib.suppress(OSError):
            return (work_path.parent / f".{token}{NAME_SIDECAR}").read_bytes().decode("utf-8", "surrogateescape")
        return name if dot else work_path.name

    def work_files(self) -> list[Path]:
        """Claimed files (anything but ksefd's dot-files: a link or FIFO renamed here in a race is one too)."""
        if not self.work_dir.is_dir():
            return []
        return sorted(p for p in self.work_dir.iterdir() if not p.name.startswith("."))

    def remove_stale_sidecars(self) -> None:
        """Name sidecars whose claim never happened or whose working file is gone."""
        if not self.work_dir.is_dir():
            return
        for sidecar in self.work_dir.glob(f".*{NAME_SIDECAR}"):
            token = sidecar.name[1:-len(NAME_SIDECAR)]
            if not any(self.work_dir.glob(f"{token}.*")):
                sidecar.unlink(missing_ok=True)

    @staticmethod
    def read_work(row: InvoiceRow) -> bytes | None:
        if row.work_path is None:
            return None
        try:
            return spool.read_bytes(row.work_path)
        except FileNotFoundError:
            return None

    @staticmethod
    def discard_work(row: InvoiceRow) -> None:
        """The working copy, once its bytes are safe in sent/ or rejected/ (it is ksefd's own copy). Plain
        strings, and no look for a name sidecar where the name was not shortened (none was written): this runs
        for every invoice of a batch."""
        if not row.work_path:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(row.work_path)
        folder, name = os.path.split(row.work_path)
        token, _, rest = name.partition(".")
        if rest != row.file_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, f".{token}{NAME_SIDECAR}"))

    @staticmethod
    def discard_path(work: Path) -> None:
        work.unlink(missing_ok=True)
        token = work.name.partition(".")[0]
        (work.parent / f".{token}{NAME_SIDECAR}").unlink(missing_ok=True)

    def give_back(self, row: InvoiceRow) -> str:
        """Rename the working copy back into the outbox under its original name (or NAME-2.xml ... if the
        ERP has put another file there since); returns the name it got there."""
        work = Path(row.work_path) if row.work_path else None
        if work is None or not work.exists():
            return row.file_name
        return self.return_file(work, row.file_name)

    def return_file(self, work: Path, name: str) -> str:
        stem, suffix = spool.split_name(name)
        data = work.read_bytes()
        target = self.folders.outbox / (spool.unique_stem(self.folders.outbox, stem, suffix, data, ()) + suffix)
        os.replace(work, target)       # same file system (work_dir is inside the outbox): the bytes do not move
        spool.fsync_directory(self.folders.outbox)
        spool.fsync_directory(self.work_dir)
        return target.name

    # --- results ----------------------------------------------------------------------------------

    # `sync=False` (a group of results, e.g. a batch): each file is still written temp + fsync + rename, and
    # the caller makes the renames durable with one `sync_sent()` before it records them in SQLite.

    def write_sent(self, file_name: str, data: bytes, *, sync: bool = True, row: InvoiceRow | None = None,
                   source_synced: bool = False) -> str:
        """sent/NAME.xml with the exact bytes; returns the stem chosen (NAME or NAME-2, ...). `row`: the invoice
        whose working copy holds `data`; it becomes sent/NAME.xml by a hard link where it can (spool.link_new;
        `source_synced`: its bytes were made durable with the group's, spool_group.flush)."""
        source = Path(row.work_path) if row is not None and row.work_path else None
        path = spool.write_unique(self.folders.sent, file_name, data, sync_dir=sync, source=source,
                                  source_synced=source_synced)
        return spool.split_name(path.name)[0]

    def write_ksef_json(self, stem: str, record: dict[str, Any], *, sync: bool = True) -> None:
        spool.write_json(self.folders.sent / f"{stem}.ksef.json", record, sync_dir=sync)

    def stage_ksef_json(self, stem: str, record: dict[str, Any]) -> spool_group.Staged:
        """NAME.ksef.json of a group: its temp, placed with the group's (spool_group.place)."""
        return spool_group.stage(self.folders.sent / f"{stem}.ksef.json", spool.json_bytes(record), replace=True)

    def stage_upo(self, stem: str, xml: bytes) -> spool_group.Staged | None:
        """NAME.upo.xml of a group (None: written before a crash, kept as it is, as write_upo does)."""
        if self.has_upo(stem):
            return None
        return spool_group.stage(self.folders.sent / f"{stem}.upo.xml", xml, replace=False)

    def write_upo(self, stem: str, xml: bytes, *, sync: bool = True) -> None:
        path = self.folders.sent / f"{stem}.upo.xml"
        if path.exists():      # written before a crash; a UPO downloaded again may differ in its signature
            return
        spool.write_new(path, xml, sync_dir=sync)

    def redrop_stem(self, file_name: str, original_stem: str | None) -> str:
        """A stem in sent/ for a re-drop's result: its own name, never the original's (NAME-2 when the ERP
        dropped the same name again), never one with a file of another invoice."""
        stem, suffix = spool.split_name(file_name)
        number = 1
        while True:
            candidate = stem if number == 1 else f"{stem}-{number}"
            taken = candidate == original_stem or any(
                (self.folders.sent / (candidate + end)).exists() for end in (suffix, ".ksef.json", ".upo.xml"))
            if not taken:
                return candidate
            number += 1

    def read_sent(self, stem: str, ending: str) -> bytes | None:
        try:
            return spool.read_bytes(os.path.join(self._sent, f"{stem}{ending}"))
        except FileNotFoundError:
            return None

    def read_ksef_json(self, stem: str) -> dict[str, Any]:
        """sent/STEM.ksef.json as a dict ({} if it is missing or unreadable)."""
        try:
            record = json.loads(self.folders.sent.joinpath(f"{stem}.ksef.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return dict(record) if isinstance(record, dict) else {}

    def write_redrop(self, stem: str, file_name: str, data: bytes, record: dict[str, Any],
                     upo: bytes | None) -> None:
        """sent/STEM.xml (the bytes as dropped), STEM.upo.xml (the original's UPO), then STEM.ksef.json last,
        which is what an ERP waits for. Safe to repeat after a crash (same stem, same content)."""
        suffix = spool.split_name(file_name)[1]
        spool.write_atomic(self.folders.sent / f"{stem}{suffix}", data, sync_dir=False)
        if upo is not None:
            self.write_upo(stem, upo, sync=False)
        spool.write_json(self.folders.sent / f"{stem}.ksef.json", record, sync_dir=True)

    def sync_sent(self) -> None:
        spool.fsync_directory(self.folders.sent)

    def has_upo(self, stem: str) -> bool:
        return os.path.exists(os.path.join(self.folders.sent, f"{stem}.upo.xml"))

    def write_rejected(self, file_name: str, data: bytes, error: dict[str, Any]) -> str:
        path = spool.write_unique(self.folders.rejected, file_name, data)
        stem = spool.split_name(path.name)[0]
        spool.write_json(self.folders.rejected / f"{stem}.error.json", localize(error))   # hint: config's language
        return stem

    def move_rejected(self, source: Path, file_name: str, error: dict[str, Any]) -> str | None:
        """A file ksefd cannot read, or an entry that is no file (a link, a FIFO, a folder), moved into rejected/
        as it is, by one rename (its bytes are never read), with NAME.error.json beside it. Returns the stem,
        or None when it cannot be moved (another file system, no permission): the caller leaves it in place."""
        stem, suffix = spool.split_name(file_name)
        stem = spool.free_stem(self.folders.rejected, stem, suffix)
        try:
            os.rename(source, self.folders.rejected / f"{stem}{suffix}")
        except OSError:
            return None
        spool.write_json(self.folders.rejected / f"{stem}.error.json", error)
        return stem

    def error_beside(self, file_name: str) -> Path:
        """outbox/NAME.error.json: the error of an entry that stays in the outbox because it cannot be moved."""
        return self.folders.outbox / (spool.bounded_stem(spool.split_name(file_name)[0]) + ".error.json")

    # --- the state of a waiting invoice -------------------------------------------------------------

    def state_path(self, file_name: str) -> Path:
        return self.folders.outbox / (spool.bounded_stem(spool.split_name(file_name)[0]) + STATE_SUFFIX)

    def _state_name(self, file_name: str) -> str:
        return os.path.join(self._outbox, spool.bounded_stem(spool.split_name(file_name)[0]) + STATE_SUFFIX)

    def write_state(self, row: InvoiceRow, state: str, message: str, extra: dict[str, Any] | None = None) -> None:
        body = {"invoiceId": row.id, "file": row.file_name, "state": state, "message": message,
                "invoiceHash": row.sha256, "claimedAt": row.created_at.isoformat(), **(extra or {})}
        path = self._state_name(row.file_name)          # strings: thousands of these in a large batch
        folder, name = os.path.split(path)
        temp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.ksefd.tmp")
        try:
            # os.open, not open(): a buffered file's fstat, ioctl and lseek are half the system calls here
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            try:
                view = memoryview(spool.json_bytes(body))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def finished(self, rows: list[InvoiceRow]) -> None:
        """clear_state + discard_work for a group of finished invoices (run in a thread)."""
        for row in rows:
            self.clear_state(row)
            self.discard_work(row)

    def clear_state(self, row: InvoiceRow) -> None:
        """Remove NAME.state.json if it still describes this invoice (a newer one may reuse the name)."""
        path = self._state_name(row.file_name)
        with contextlib.suppress(FileNotFoundError, ValueError, OSError, msgspec.DecodeError):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                body = more = os.read(fd, STATE_READ)
                while len(more) == STATE_READ:
                    more = os.read(fd, STATE_READ)
                    body += more
            finally:
                os.close(fd)
            found = msgspec.json.decode(body)
            if isinstance(found, dict) and found.get("invoiceId") == row.id:
                os.unlink(path)
