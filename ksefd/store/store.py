"""`Store`: the state database opened once, with one repository per concern."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import TracebackType
from typing import Protocol

from ksefd.clock import SystemClock

from .certificates import CertificateRenewalRepo
from .db import Database
from .events import EventRepo
from .health import HeartbeatRepo, HoldRepo
from .inbox import InboxRepo
from .invoices import InvoiceRepo
from .kv import KeyValueRepo
from .offline import AnnouncementRepo, OfflineRepo
from .ratelimits import RateLimitJournal
from .sessions import SessionRepo


class _Clock(Protocol):
    def now(self) -> dt.datetime: ...


class Store:
    """`store = await Store.open(path, clock)`; `await store.close()` (or `async with`)."""

    def __init__(self, db: Database, clock: _Clock) -> None:
        self.db = db
        self.clock = clock
        now = clock.now
        self.invoices = InvoiceRepo(db, now)
        self.sessions = SessionRepo(db, now)
        self.inbox = InboxRepo(db, now)
        self.kv = KeyValueRepo(db, now)
        self.rate_limits = RateLimitJournal(db, now)     # ksefd.ksef.ratelimit_journal.LimiterJournal
        self.holds = HoldRepo(db, now)
        self.heartbeat = HeartbeatRepo(db, now)
        self.events = EventRepo(db)
        self.announcements = AnnouncementRepo(db, now)
        self.offline = OfflineRepo(db, now)
        self.certificates = CertificateRenewalRepo(db, now)

    @classmethod
    async def open(cls, path: Path, clock: _Clock | None = None, *, private_folder: bool = False) -> Store:
        """Open (creating the file and its folder if needed) and migrate to the current schema. The file is
        0600; `private_folder`: a folder ksefd creates is 0700 (not the default data_dir; see Database.open)."""
        return cls(await Database.open(path, private_folder=private_folder), clock or SystemClock())

    @property
    def path(self) -> Path:
        """The state database's file."""
        return self.db.path

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
