"""Outbox entries intake cannot take as invoices, whatever their content (issue #15 points 2-4): a symbolic
link, a FIFO, a folder, a device or a socket with an `*.xml` name, and a file ksefd's user cannot read. Each is
reported (an error file, a log line, a REJECTED row that `ksefd status` shows) and never stops the company.

Links are not followed on purpose: the invoice must be the file ksefd claims, not a file elsewhere that may
change or vanish after the claim. A FIFO is never opened for reading (it would wait for a writer forever).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from ksefd import spool
from ksefd.i18n import N_, _, translate

STAGE = "intake"
# Message ids: error.json carries them in the config's language (the `_()` below; codes stay English).
HINT_SAVE_AS_FILE = N_("Save the invoice itself as an ordinary file in the outbox (write NAME.tmp, then rename it "
                       "to NAME.xml); remove this entry.")
WHAT: dict[str, tuple[str, str]] = {    # kind -> (what it is, why ksefd does not take it)
    "symbolic-link": (N_("a symbolic link"), N_("ksefd does not follow links: the invoice must be the file in the "
                                                "outbox itself, so that nobody can change it after ksefd took it")),
    "folder": (N_("a folder"), N_("only files can be invoices")),
    "fifo": (N_("a named pipe (FIFO)"), N_("ksefd never reads from pipes (reading would wait for a writer forever)")),
    "socket": (N_("a socket"), N_("only files can be invoices")),
    "device-file": (N_("a device file"), N_("only files can be invoices")),
    "special-file": (N_("a special file"), N_("only files can be invoices")),
}


class NotAFile(OSError):
    """A claimed entry turned out not to be a regular file (replaced between the scan and the claim)."""

    def __init__(self, kind: str) -> None:
        super().__init__(errno.EINVAL, kind)
        self.kind = kind


def read_claimed(path: Path) -> bytes:
    """The bytes of a claimed file, refusing anything but a regular file: never follows a link, never blocks on
    a FIFO. Raises NotAFile, or the OSError of the read (PermissionError: the file is not readable by ksefd)."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotAFile(spool.entry_kind(info.st_mode))
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):       # swapped between lstat and open
            raise NotAFile(spool.entry_kind(opened.st_mode))
        return spool.read_fd(fd, opened.st_size)   # not in 1 MiB reads: each was an mmap of its own (read_fd)
    finally:
        os.close(fd)


def not_a_file(name: str, kind: str) -> dict[str, Any]:
    what, why = WHAT.get(kind, WHAT["special-file"])
    return {"stage": STAGE, "code": kind, "file": name,
            "message": _("{name} in the outbox is {what}, not a file: {why}. Nothing was sent to KSeF.",
                         name=repr(name), what=translate(what), why=translate(why)),
            "hint": translate(HINT_SAVE_AS_FILE)}


def unreadable(name: str, exc: OSError) -> dict[str, Any]:
    if isinstance(exc, PermissionError):
        return {"stage": STAGE, "code": "unreadable-file", "file": name,
                "message": _("ksefd's user may not read {name} (permission denied); nothing was sent to KSeF.",
                             name=repr(name)),
                "hint": _("Let the ERP create files ksefd's user or group can read (e.g. mode 0640 with ksefd's "
                          "group, or umask 027), then drop the file again."),
                "details": {"error": exc.strerror or str(exc)}}
    return {"stage": STAGE, "code": "read-failed", "file": name,
            "message": _("ksefd could not read {name}: {error}; nothing was sent to KSeF.", name=repr(name),
                         error=str(exc.strerror or exc)),
            "hint": _("Check the disk or network share the outbox is on, then drop the file again."),
            "details": {"error": exc.strerror or str(exc), "errno": exc.errno}}


def name_not_utf8(shown: str) -> dict[str, Any]:
    return {"stage": STAGE, "code": "name-not-utf8", "file": shown,
            "message": _("The file name {name} is not valid UTF-8 (each \ufffd stands for a byte that is not); "
                         "ksefd cannot record or report such a name, so nothing was sent to KSeF.", name=repr(shown)),
            "hint": _("Let the ERP write file names in UTF-8 (or only Latin letters, digits, '-' and '_'), then drop "
                      "the file again.")}


def check_failed(name: str, exc: BaseException) -> dict[str, Any]:
    """An unexpected failure of the local checks themselves (a bug in ksefd or its XML library)."""
    return {"stage": "local-check", "code": "check-failed", "file": name,
            "message": _("ksefd could not check {name} ({error}); nothing was sent to KSeF.", name=repr(name),
                         error=f"{type(exc).__name__}: {exc}"),
            "hint": _("Please report this to ksefd's maintainers with the file; then fix it or drop it again.")}
