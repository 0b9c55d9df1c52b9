"""KSeF's rate limits as numbers (PROTOCOL.md §7, §14.3, §14.5): per group, requests per second, minute and
hour; the PRD defaults; a lenient reader of `GET /rate-limits`. ratelimit.py enforces them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("ksefd.ksef.ratelimit")

SECOND, MINUTE, HOUR = 1.0, 60.0, 3600.0


@dataclass(frozen=True)
class GroupLimits:
    """Requests allowed per second, minute and hour; None means no limit (KSeF reports -1)."""

    per_second: int | None
    per_minute: int | None
    per_hour: int | None

    def windows(self) -> tuple[tuple[float, int], ...]:
        pairs = ((SECOND, self.per_second), (MINUTE, self.per_minute), (HOUR, self.per_hour))
        return tuple((length, limit) for length, limit in pairs if limit is not None)

    def to_json(self) -> list[int]:
        return [-1 if v is None else v for v in (self.per_second, self.per_minute, self.per_hour)]

    @classmethod
    def of(cls, per_second: int, per_minute: int, per_hour: int) -> GroupLimits:
        def none_if_unlimited(value: int) -> int | None:
            return None if value < 0 else value
        return cls(none_if_unlimited(per_second), none_if_unlimited(per_minute), none_if_unlimited(per_hour))


# PRD defaults, which DEMO mirrors and TEST equals since 2.5.0 (PROTOCOL.md §7, close groups §14.3,
# anonymous/global/collectiveIdentifier §14.5). Used until `GET /rate-limits` says otherwise.
PRODUCTION_LIMITS: Mapping[str, GroupLimits] = {
    "onlineSession": GroupLimits.of(10, 30, 120),
    "onlineSessionClose": GroupLimits.of(20, 60, 240),
    "batchSession": GroupLimits.of(10, 20, 60),
    "batchSessionClose": GroupLimits.of(20, 40, 120),
    "invoiceSend": GroupLimits.of(10, 30, 180),
    "invoiceStatus": GroupLimits.of(30, 120, 1200),
    "sessionList": GroupLimits.of(5, 10, 60),
    "sessionInvoiceList": GroupLimits.of(10, 20, 200),
    "sessionMisc": GroupLimits.of(10, 120, 1200),
    "invoiceMetadata": GroupLimits.of(8, 16, 20),
    "invoiceExport": GroupLimits.of(8, 16, 20),
    "invoiceExportStatus": GroupLimits.of(10, 60, 600),
    "invoiceDownload": GroupLimits.of(8, 16, 64),
    "other": GroupLimits.of(10, 30, 120),
    "collectiveIdentifier": GroupLimits.of(20, 120, 240),
    "anonymous": GroupLimits.of(60, -1, -1),
    "global": GroupLimits.of(-1, -1, -1),
}


def parse_rate_limits(body: Mapping[str, Any]) -> dict[str, GroupLimits]:
    """Read an `EffectiveApiRateLimits` body (GET /rate-limits) leniently (§14.7 point 5): groups we
    do not know are ignored, a malformed entry keeps the default, and -1 means "no limit"."""
    parsed: dict[str, GroupLimits] = {}
    for group, default in PRODUCTION_LIMITS.items():
        entry = body.get(group)
        if not isinstance(entry, Mapping):
            parsed[group] = default
            continue
        values = [entry.get(name) for name in ("perSecond", "perMinute", "perHour")]
        numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(numbers) == 3:
            parsed[group] = GroupLimits.of(*numbers)
        else:
            log.warning("ratelimit.malformed_group", group=group, entry=str(entry)[:200])
            parsed[group] = default
    return parsed
