"""One daemon per state database (issue #10 point 3), and folders it can write before it starts (point 4).

`InstanceLock(state_db)` holds an OS lock on `STATE_DB.lock`, next to the database: `fcntl.flock` on POSIX,
`msvcrt.locking` on Windows. The kernel drops the lock when the holder's process ends, however it ends
(kill -9, power cut), so a stale lock file never stops the next start: only a live daemon holds the lock.
The holder writes its pid into the file, so the second `ksefd run` names the first one. Readers
(`ksefd status`) never take the lock: they only read the database (WAL).

`check_writable(config)` runs before anything is opened: the data folder, the state database's folder and
file, and every company's folders, each checked by creating (then removing) a small file in it, so a
missing folder that cannot be created, a file where a folder should be, a read-only or full disk, or a
folder the service's user may not write are reported with the path, what is wrong and the fix (exit 78),
not as a traceback from deep inside. The small file is fsynced in the first folder of each file system only: a
full disk is a property of the file system, and an fsync per folder made 1 000 companies (4 000 folders) wait
about 4 s before their first login (issue #16 point 4).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
from pathlib import Path
from types import TracebackType

from ksefd.config import Config
from ksefd.i18n import _

EX_TEMPFAIL = 75   # sysexits.h: "try again later": another daemon runs on this state database


class AlreadyRunning(Exception):
    """Another live process holds the state database's lock."""

    def __init__(self, lock_path: Path, pid: int | None) -> None:
        self.lock_path = lock_path
        self.pid = pid
        holder = _("process {pid}", pid=pid) if pid else _("another process")
        super().__init__(_(
            "another ksefd is already running on the state database {database} ({holder} holds {lock}). Only one "
            "daemon may use a state database: stop that one first (e.g. `systemctl stop ksefd` or `kill {pid}`), or "
            "give this config its own [daemon] state_db. `ksefd status -c CONFIG` works beside the running daemon.",
            database=lock_path.with_suffix(""), holder=holder, lock=lock_path, pid=pid or "PID"))


class StartupProblem(Exception):
    """A path the daemon must write is unusable; the message names the path, the problem and the fix."""

    def __init__(self, key: str, path: Path, what: str, fix: str) -> None:
        self.key = key
        self.path = path
        self.what = what
        self.fix = fix
        super().__init__(f"{key} = {path}: {what}. {fix}")


def lock_path_for(state_db: Path) -> Path:
    return state_db.with_name(state_db.name + ".lock")


class InstanceLock:
    """`with InstanceLock(state_db): ...`; raises AlreadyRunning at once (never waits)."""

    def __init__(self, state_db: Path) -> None:
        self.path = lock_path_for(state_db)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                raise AlreadyRunning(self.path, _read_pid(self.path))
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)        # the next holder's pid, never a dead one, is what readers see
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


# Windows locks a byte range and refuses reads of a locked range, so it locks a byte far past the pid.
_WINDOWS_LOCK_OFFSET = 1 << 20

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --- writable paths -------------------------------------------------------------------------------

def check_writable(config: Config) -> None:
    """Raise StartupProblem for the first path the daemon could not write (see the module's docstring)."""
    folders: list[tuple[str, Path]] = [("[daemon] data_dir", config.data_dir),
                                       ("[daemon] state_db (its folder)", config.state_db.parent)]
    for company in config.companies:
        kinds = (("outbox", "sent", "rejected") if company.send else ()) + (("inbox",) if company.receive else ())
        folders += [(f"company {company.name!r} {kind}", getattr(company.folders, kind)) for kind in kinds]
    seen: set[Path] = set()
    synced: set[int] = set()        # file systems (st_dev) where a probe has been fsynced
    for key, folder in folders:
        if folder not in seen:
            seen.add(folder)
            check_folder(key, folder, synced)
    check_file("[daemon] state_db", config.state_db)


def check_folder(key: str, folder: Path, synced: set[int] | None = None) -> None:
    """`synced`: the file systems already probed with an fsync (this folder's is added); None fsyncs always."""
    if folder.exists() and not folder.is_dir():
        raise StartupProblem(key, folder, _("is a file, not a folder"),
                             _("Move that file away, or point the setting at a folder."))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupProblem(key, folder, _("is missing and cannot be created ({reason})", reason=_reason(error)),
                             _fix(error, folder, create=True)) from None
    probe = folder / f".ksefd-write-test-{secrets.token_hex(4)}.tmp"
    try:
        with probe.open("wb") as handle:
            handle.write(b"ksefd")
            handle.flush()
            device = os.fstat(handle.fileno()).st_dev
            if synced is None or device not in synced:
                os.fsync(handle.fileno())      # a full disk may show only here (delayed allocation)
                if synced is not None:
                    synced.add(device)
    except OSError as error:
        raise StartupProblem(key, folder, _("is not writable ({reason})", reason=_reason(error)),
                             _fix(error, folder)) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_file(key: str, path: Path) -> None:
    if path.is_dir():
        raise StartupProblem(key, path, _("is a folder, not a file"),
                             _("Give the path of a file (e.g. state.sqlite3), not of a folder."))
    if not path.exists():
        return              # created by SQLite in a folder already found writable
    try:
        with path.open("r+b"):
            pass
    except OSError as error:
        raise StartupProblem(key, path, _("cannot be opened for writing ({reason})", reason=_reason(error)),
                             _fix(error, path)) from None


def _reason(error: OSError) -> str:
    code = error.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        return _("the disk is full")
    if code == errno.EROFS:
        return _("the file system is read-only")
    if code in (errno.EACCES, errno.EPERM):
        return _("permission denied")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return _("a file stands where a folder is expected on the way")
    if code == errno.ENOENT:
        return _("a folder on the way does not exist")
    return error.strerror or str(error)


def _fix(error: OSError, path: Path, *, create: bool = False) -> str:
    code = error.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        return _("Free some space on that disk (or raise the quota), then start ksefd again.")
    if code == errno.EROFS:
        return _("Put the folder on a writable disk, or mount it read-write.")
    if code in (errno.EACCES, errno.EPERM):
        return _("Let the user ksefd runs as{user} write there (e.g. `chown` the folder to it), or choose another "
                 "path in the config.", user=_user())
    if create:
        return _("Create {path} yourself, or choose another path in the config.", path=path)
    return _("Check the path in the config.")


def _user() -> str:
    with contextlib.suppress(Exception):
        import getpass
        return f" ({getpass.getuser()})"
    return ""
