"""`ksefd requeue -c CONFIG COMPANY NAME`: a file from `rejected/`, fixed by a person, back into the pipeline
(issue #12 item 4).

The rejected copy stays where it is (rejected/ is the ERP's record of what was refused): the file is copied
into the company's outbox under a new name `STEM.requeue-N.xml` that no file in outbox/, sent/ or rejected/
has used, created without ever replacing a file (spool.write_new: temp + link), so the intake picks it up as
a new invoice. The requeue is recorded as an event in the state database (kind `requeue`), next to the
invoice's own history. The local checks run first: a file that would be refused again is not requeued.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from ksefd import spool
from ksefd.clock import Clock, warsaw_date
from ksefd.config import Company, Config
from ksefd.i18n import _
from ksefd.invoice import InvoiceRejected, check_invoice
from ksefd.ksef import sha256_b64
from ksefd.store import Store

_REQUEUED = re.compile(r"\.requeue-\d+$")


class RequeueError(Exception):
    """The file cannot be requeued; the message names the file and the fix."""


@dataclass(frozen=True)
class Requeued:
    source: Path
    target: Path
    sha256: str


def rejected_file(company: Company, name: str) -> Path:
    """rejected/NAME (".xml" may be left out); only a plain file name, never a path."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise RequeueError(_("{name}: give the file's name in {folder}, not a path", name=repr(name),
                             folder=company.folders.rejected))
    candidates = [name] if name.lower().endswith(".xml") else [name, f"{name}.xml"]
    for candidate in candidates:
        path = company.folders.rejected / candidate
        if path.is_file():
            return path
    raise RequeueError(_("{file} does not exist; list the folder to see the names of rejected invoices",
                         file=company.folders.rejected / candidates[-1]))


def new_name(company: Company, source: Path) -> str:
    """`STEM.requeue-N.xml` with N above any used so far for this stem in outbox/ (and its working folder),
    sent/ and rejected/ (results may carry spool's `-2` suffix and companions such as `.ksef.json`)."""
    stem, suffix = spool.split_name(source.name)
    base = _REQUEUED.sub("", stem)
    used = re.compile(re.escape(base) + r"\.requeue-(\d+)(?:-\d+)?(?:\..*)?", re.IGNORECASE)
    folders = company.folders
    names: list[str] = []
    for folder in (folders.outbox, folders.sent, folders.rejected):
        if folder.is_dir():
            names += [entry.name for entry in folder.iterdir()]
    work = folders.outbox / ".ksefd"          # claimed files wait there as "<16 hex>.NAME" (outbox_files.py)
    if work.is_dir():
        names += [entry.name.split(".", 1)[-1] for entry in work.iterdir()]
    numbers = [int(found.group(1)) for found in map(used.fullmatch, names) if found]
    return f"{base}.requeue-{max(numbers, default=0) + 1}{suffix}"


async def requeue(config: Config, company_name: str, name: str, clock: Clock, *, force: bool = False) -> Requeued:
    try:
        company = config.company(company_name)
    except KeyError:
        raise RequeueError(_("no company named {name}; use one of: {names}", name=repr(company_name),
                             names=", ".join(c.name for c in config.companies))) from None
    if not company.send:
        raise RequeueError(_("company {company} has send = false: nothing would send the file; set send = true "
                             "first", company=company.name))
    source = rejected_file(company, name)
    data = source.read_bytes()
    if not force:
        try:
            check_invoice(data, file_name=source.name, company_nip=company.nip, today=warsaw_date(clock.now()))
        except InvoiceRejected as rejected:
            raise RequeueError(_("{file} would be refused again: [{code}] {message} Fix: {hint} (--force requeues "
                                 "it anyway)", file=source, code=rejected.code, message=rejected.message,
                                 hint=rejected.hint)) from None
    company.folders.outbox.mkdir(parents=True, exist_ok=True)
    while True:
        target = company.folders.outbox / new_name(company, source)
        try:
            spool.write_new(target, data)      # never replaces a file; temp name first, so never read half-written
        except spool.SpoolConflict:            # an ERP dropped that very name meanwhile: pick the next one
            continue
        break
    digest = sha256_b64(data)
    async with await Store.open(config.state_db, clock) as store:
        await store.events.add(at=clock.now(), kind="requeue", company=company.name, detail={
            "from": f"rejected/{source.name}", "to": f"outbox/{target.name}", "invoiceHash": digest,
            "at": clock.now().astimezone(dt.UTC).isoformat(timespec="seconds")})
    return Requeued(source, target, digest)
