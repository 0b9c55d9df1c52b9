"""The daemon's state in one SQLite file (DESIGN.md): outbox invoices and their state machine, KSeF
sessions and UPOs, inbox checkpoints and deliveries, rate-limit snapshots, holds, heartbeat, audit.

Imports nothing from the daemon, the KSeF client or the simulator (DESIGN.md, layers).
"""

from .certificates import RENEWAL_STATES, CertificateRenewalRepo, Renewal
from .db import Database, SchemaTooNew, StoreError
from .events import Event, EventRepo
from .health import Beat, HeartbeatRepo, Hold, HoldRepo
from .inbox import Checkpoint, Delivery, InboxRepo
from .invoices import Change, IllegalTransition, InvoiceRepo, InvoiceRow, NewInvoice, StateConflict
from .kv import RATE_LIMITS, KeyValueRepo
from .migrations import MIGRATIONS
from .offline import Announcement, AnnouncementRepo, OfflineInvoice, OfflineRepo
from .ratelimits import BootIdentity, PreviousRun, RateLimitJournal, current_boot
from .sessions import SessionKind, SessionRepo, SessionRow, Upo
from .states import (
    IN_KSEF_STATES,
    INVOICE_TRANSITIONS,
    SESSION_TRANSITIONS,
    TERMINAL_INVOICE_STATES,
    UNFINISHED_SESSION_STATES,
    InvoiceState,
    SessionState,
)
from .store import Store

__all__ = [
    "INVOICE_TRANSITIONS",
    "IN_KSEF_STATES",
    "MIGRATIONS",
    "RATE_LIMITS",
    "RENEWAL_STATES",
    "SESSION_TRANSITIONS",
    "TERMINAL_INVOICE_STATES",
    "UNFINISHED_SESSION_STATES",
    "Announcement",
    "AnnouncementRepo",
    "Beat",
    "BootIdentity",
    "CertificateRenewalRepo",
    "Change",
    "Checkpoint",
    "Database",
    "Delivery",
    "Event",
    "EventRepo",
    "HeartbeatRepo",
    "Hold",
    "HoldRepo",
    "IllegalTransition",
    "InboxRepo",
    "InvoiceRepo",
    "InvoiceRow",
    "InvoiceState",
    "KeyValueRepo",
    "NewInvoice",
    "OfflineInvoice",
    "OfflineRepo",
    "PreviousRun",
    "RateLimitJournal",
    "Renewal",
    "SchemaTooNew",
    "SessionKind",
    "SessionRepo",
    "SessionRow",
    "SessionState",
    "StateConflict",
    "Store",
    "StoreError",
    "Upo",
    "current_boot",
]
