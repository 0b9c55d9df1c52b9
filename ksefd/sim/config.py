"""Settings of one simulator instance (`ksefd sim` options; tests build it directly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0                         # 0: pick a free port
    state_path: Path | None = None        # SQLite file; None keeps state in memory
    # Lifetimes (PROTOCOL.md §3.5): read by clients from validUntil/exp, never hard-coded there.
    challenge_ttl_s: int = 600
    authentication_token_ttl_s: int = 2700
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 7 * 24 * 3600
    online_session_ttl_s: int = 12 * 3600
    # Seconds an auth operation stays in 100 before its verdict (PROTOCOL.md §3.4; 0: at the first look).
    auth_processing_delay_s: float = 0.0
    # Seconds a KSeF token stays Pending (and Revoking) unless read first (PROTOCOL.md §9.1, tokens.py).
    token_activation_delay_s: float = 1.0
    # Seconds an invoice spends in 100 and 150 before its verdict (0: as fast as possible).
    processing_delay_s: float = 0.0
    # Documents per session UPO page (PROTOCOL.md §4.4: 10 000, the XSD's Dokument maxOccurs); tests of the
    # paging shrink it instead of sending 10 001 invoices.
    upo_page_size: int = 10_000
    # Name of the environment as the UPO spells it ("TE" adds the test suffix, "PRD" none).
    environment: str = "TE"
    # Rate-limit profile: "test" and "production" (both the PRD numbers since 2.5.0) or "off".
    limits_profile: str = "test"
    # The per-IP `global` group across every context and operation (perSecond, perMinute, perHour; -1: no
    # limit). KSeF reports -1 today; the 2.9.0 example reads 75 per second (PROTOCOL.md §14.5, §15), so a
    # test can switch it on to check that clients keep inside it. It applies under every profile.
    global_limit: tuple[int, int, int] = (-1, -1, -1)
    # Fault switches, e.g. "5xx=0.1,latency=0.2" (see faults.py); empty: no faults.
    faults: str = ""
    # How far permanentStorageHwmDate trails "now" (PROTOCOL.md §6.1).
    hwm_lag_s: float = 5.0
    # Receiving (receiving.py, exports.py; PROTOCOL.md §6): records per filter set before truncation,
    # export part size before encryption (50 MB on KSeF), compressed size of an export package's invoices
    # before truncation (1 GB on KSeF), and how long an export stays in status 100 on the simulator's
    # clock (tests of the 10-concurrent-exports limit make it positive).
    query_cap: int = 10_000
    export_part_size: int = 50_000_000
    export_max_compressed: int = 1_000_000_000
    export_delay_s: float = 0.0
    # Seconds a certificate enrollment stays in status 100 before its verdict (PROTOCOL.md §9.3; 0: at the first
    # look).
    certificate_enrollment_delay_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.upo_page_size <= 10_000:
            raise ValueError(f"upo_page_size must be 1..10000 (KSeF: 10000), not {self.upo_page_size}")
