"""The schema, as migrations: MIGRATIONS[n] takes a database from `PRAGMA user_version` n to n + 1.

Never edit a migration that has shipped; append a new one. Times are UTC text in one fixed format
(`db.db_time`), so comparing the text compares the times.

What is deliberately NOT stored: session AES keys. A restarted daemon never needs one. Unfinished
online sessions are closed without it (closing needs only the reference) and new invoices go to a
new session; a batch session whose upload was interrupted is abandoned before close (KSeF processes
nothing until close, PROTOCOL.md §5) and its invoices go into a new one; in-doubt sends are resolved
from the session's invoice list by `invoiceHash` and from invoice statuses and UPOs, none of which
needs the key. Keeping a key would only make the state file a secret.
"""

from __future__ import annotations

_V1 = (
    # The outbox state machine (DESIGN.md, an invoice's life; states in store/states.py).
    """CREATE TABLE invoices (
        id               INTEGER PRIMARY KEY,
        company          TEXT NOT NULL,
        file_name        TEXT NOT NULL,            -- the name the ERP dropped
        work_path        TEXT,                     -- where ksefd keeps the claimed file while it is in flight
        sha256           TEXT NOT NULL,            -- Base64 SHA-256 of the exact bytes (invoiceHash)
        size             INTEGER NOT NULL,
        seller_nip       TEXT,                     -- KSeF's duplicate key: (seller_nip, invoice_type, invoice_number)
        invoice_type     TEXT,                     -- RodzajFaktury
        invoice_number   TEXT,                     -- P_2
        issue_date       TEXT,                     -- P_1
        has_attachment   INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL,
        mode             TEXT,                     -- online | batch
        offline          INTEGER NOT NULL DEFAULT 0,   -- sent (or to be sent) with offlineMode=true
        offline_deadline TEXT,
        session_id       INTEGER REFERENCES ksef_sessions(id),
        invoice_ref      TEXT,                     -- the invoice's reference number in its session (...-EE-...)
        ksef_number      TEXT,
        status_code      INTEGER,                  -- the last invoice status code KSeF gave
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TEXT,
        last_error       TEXT,                     -- JSON {stage, code, message, details, hint}
        result_name      TEXT,                     -- the stem chosen in sent/ or rejected/ (NAME or NAME-2)
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL
    )""",
    "CREATE INDEX invoices_due ON invoices (company, state, next_attempt_at)",
    "CREATE INDEX invoices_hash ON invoices (company, sha256)",
    "CREATE INDEX invoices_key ON invoices (seller_nip, invoice_type, invoice_number)",
    "CREATE INDEX invoices_session ON invoices (session_id)",
    "CREATE INDEX invoices_ksef_number ON invoices (ksef_number)",
    # KSeF sessions: what a restart needs to close, poll or abandon them (no key material, see above).
    """CREATE TABLE ksef_sessions (
        id           INTEGER PRIMARY KEY,
        company      TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('online', 'batch')),
        reference    TEXT NOT NULL UNIQUE,         -- ...-SO-... or ...-SB-...
        state        TEXT NOT NULL,
        offline_mode INTEGER NOT NULL DEFAULT 0,   -- batch: offlineMode applies to the whole session
        status_code  INTEGER,                      -- the last session status code KSeF gave
        opened_at    TEXT NOT NULL,
        valid_until  TEXT,
        last_used_at TEXT,
        closed_at    TEXT,
        last_error   TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    )""",
    "CREATE INDEX sessions_company ON ksef_sessions (company, kind, state)",
    # UPOs: per invoice (also written to sent/NAME.upo.xml) and per session (the collective one).
    """CREATE TABLE upos (
        id         INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES ksef_sessions(id),
        invoice_id INTEGER REFERENCES invoices(id),
        reference  TEXT NOT NULL,                  -- the UPO page reference (...-EU-...) or the KSeF number
        sha256     TEXT NOT NULL,
        xml        BLOB NOT NULL,
        saved_at   TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX upos_unique ON upos (session_id, COALESCE(invoice_id, 0), reference)",
    # The audit trail: every state transition and notable decision.
    """CREATE TABLE events (
        id         INTEGER PRIMARY KEY,
        at         TEXT NOT NULL,
        company    TEXT,
        kind       TEXT NOT NULL,                  -- invoice | session | hold | ...
        invoice_id INTEGER REFERENCES invoices(id),
        session_id INTEGER REFERENCES ksef_sessions(id),
        from_state TEXT,
        to_state   TEXT,
        detail     TEXT                            -- JSON
    )""",
    "CREATE INDEX events_invoice ON events (invoice_id)",
    "CREATE INDEX events_company ON events (company, to_state, at)",
    # Small state: rate-limiter snapshots (namespace 'ratelimit') and anything alike.
    """CREATE TABLE kv (
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    # Receiving: one checkpoint per (company, subject type), PROTOCOL.md §6.4.
    """CREATE TABLE inbox_checkpoints (
        company           TEXT NOT NULL,
        subject_type      TEXT NOT NULL,
        next_from         TEXT,                    -- where the next export window starts (the checkpoint)
        last_cycle_at     TEXT,
        last_reconcile_at TEXT,
        updated_at        TEXT NOT NULL,
        PRIMARY KEY (company, subject_type)
    ) WITHOUT ROWID""",
    # Receiving: what was delivered, so a KSeF number is delivered once even after the ERP moved it.
    """CREATE TABLE inbox_delivered (
        company                TEXT NOT NULL,
        ksef_number            TEXT NOT NULL,
        subject_type           TEXT NOT NULL,
        sha256                 TEXT NOT NULL,
        path                   TEXT NOT NULL,
        permanent_storage_date TEXT,
        delivered_at           TEXT NOT NULL,
        PRIMARY KEY (company, ksef_number)
    ) WITHOUT ROWID""",
    # Companies that need a person (credentials, permissions); retried slowly.
    """CREATE TABLE company_holds (
        company       TEXT PRIMARY KEY,
        code          TEXT NOT NULL,
        reason        TEXT NOT NULL,
        since         TEXT NOT NULL,
        next_retry_at TEXT,
        updated_at    TEXT NOT NULL
    )""",
    # Health as data (DESIGN.md convention 7).
    """CREATE TABLE heartbeat (
        component TEXT PRIMARY KEY,
        pid       INTEGER NOT NULL,
        at        TEXT NOT NULL,
        detail    TEXT
    )""",
)

# KSeF certificate renewal (issue #13): one row per certificate being replaced, its steps in `state`
# (store/certificates.py), so a daemon killed at any moment resumes without losing the new key or enrolling twice.
_V2_CERTIFICATE_RENEWALS = (
    """CREATE TABLE certificate_renewals (
        id               INTEGER PRIMARY KEY,
        certificate_type TEXT NOT NULL,              -- Authentication | Offline
        old_fingerprint  TEXT NOT NULL,              -- SHA-256 of the certificate being replaced
        old_serial       TEXT NOT NULL,
        old_valid_to     TEXT NOT NULL,              -- as KSeF reports it (may be shorter than the file says)
        certificate_path TEXT NOT NULL,              -- the configured files that get the successor
        key_path         TEXT NOT NULL,
        password_file    TEXT NOT NULL,
        companies        TEXT NOT NULL,              -- JSON list of the companies using the certificate
        state            TEXT NOT NULL,
        name             TEXT NOT NULL,              -- the successor's certificateName (unique: finds it again)
        valid_from       TEXT,                       -- the successor's validFrom as requested
        reference        TEXT,                       -- the enrollment's reference number (...-EH-...)
        serial           TEXT,                       -- the successor's serial number
        new_valid_to     TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TEXT,
        last_error       TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        UNIQUE (old_fingerprint, certificate_type)
    )""",
)

_V3_RATE_LIMITS = (
    # The rate limiter's grants (issue #10 point 1): one row per request KSeF was sent, committed before it
    # was sent (store/ratelimits.py); rows older than an hour are pruned. Times are epoch seconds (REAL),
    # as the limiter counts them.
    """CREATE TABLE rate_grants (
        id        INTEGER PRIMARY KEY,
        at        REAL NOT NULL,                   -- granted (committed before the request was sent)
        answered  REAL,                            -- its answer or failure was in; NULL: in flight or unknown
        context   TEXT NOT NULL,                   -- KSeF context key ("" for per-IP public calls)
        grp       TEXT NOT NULL                    -- rate-limit group (PROTOCOL.md §7)
    )""",
    # When KSeF counted a grant, at the latest: its answer time, else its grant time.
    "CREATE INDEX rate_grants_counted ON rate_grants (coalesce(answered, at))",
    # Running 429 blocks per context: no request goes out before `until` (PROTOCOL.md §7).
    """CREATE TABLE rate_blocks (
        context   TEXT PRIMARY KEY,
        until     REAL NOT NULL
    ) WITHOUT ROWID""",
)

_V4_OFFLINE = (
    # Latarnia announcements (PROTOCOL.md §1, §8.1), per KSeF target: FAILURE_START / FAILURE_END decide the
    # offline deadlines, so their history outlives the daemon. One row per message id (a newer version of the
    # same message replaces it).
    """CREATE TABLE ksef_announcements (
        target      TEXT NOT NULL,              -- the Latarnia URL the message came from
        message_id  TEXT NOT NULL,
        event_id    INTEGER,
        category    TEXT NOT NULL,              -- FAILURE | TOTAL_FAILURE | MAINTENANCE
        type        TEXT NOT NULL,              -- FAILURE_START | FAILURE_END | MAINTENANCE_ANNOUNCEMENT
        title       TEXT,
        text        TEXT,
        start       TEXT,
        end         TEXT,
        version     INTEGER,
        published   TEXT,
        seen_at     TEXT NOT NULL,
        PRIMARY KEY (target, message_id)
    ) WITHOUT ROWID""",
    # Offline invoices (PROTOCOL.md §8): why and when each was issued offline, its legal deadline, the
    # artefacts written for the ERP, the warnings already given and a technical correction's original.
    """CREATE TABLE offline_invoices (
        invoice_id      INTEGER PRIMARY KEY REFERENCES invoices(id),
        company         TEXT NOT NULL,
        mode            TEXT NOT NULL,          -- offline24 | unavailability | failure | total-failure
        reason          TEXT NOT NULL,
        event_id        INTEGER,                -- the Latarnia event that made it offline (if announced)
        issued_at       TEXT NOT NULL,
        deadline        TEXT,                   -- NULL: none yet (the outage has not ended) or none at all
        stem            TEXT NOT NULL,          -- offline/STEM.offline.json and its images
        kod2            INTEGER NOT NULL DEFAULT 0,
        warned          INTEGER NOT NULL DEFAULT 0,   -- 0, 50, 90: the deadline warnings given
        missed          INTEGER NOT NULL DEFAULT 0,
        corrects_id     INTEGER REFERENCES invoices(id),   -- technical correction: the rejected original
        corrects_hash   TEXT,
        updated_at      TEXT NOT NULL
    )""",
    "CREATE INDEX offline_invoices_company ON offline_invoices (company)",
    # The dispatcher's question each round: which offline invoices are back in QUEUED (few, in a large queue).
    "CREATE INDEX invoices_offline ON invoices (company, state) WHERE offline = 1",
    # Files the ERP dropped into outbox/offline/: offline24 on demand, recorded before the file is moved on.
    """CREATE TABLE offline_requests (
        company      TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        file_name    TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        PRIMARY KEY (company, sha256)
    ) WITHOUT ROWID""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2_CERTIFICATE_RENEWALS, _V3_RATE_LIMITS, _V4_OFFLINE)
