"""Receiving invoices, part 1 (PROTOCOL.md §6.1, §6.2, §14.4): query filters, metadata query with paging,
single-invoice download. Exports are in export.py and use the same filters.

    receiver = Receiver(ctx.auth)
    filters = query_filters("Subject2", checkpoint)                 # PermanentStorage, restricted to the HWM
    result = await receiver.query_all(filters)                       # §6.1 paging, deduplicated by KSeF number
    xml = await receiver.download(result.invoices[0]["ksefNumber"], expected_hash=...)

Rate limits matter more than anything here: the metadata query allows 20 pages per hour and the single
download 64 per hour per context (§7), so the daemon syncs with exports and uses these for small gaps.
Dates always travel with an explicit offset and windows are capped at 100 days (§14.4). Dates KSeF sends
back (checkpoints) are kept as the exact strings it sent: they carry 7 fractional digits, which a Python
datetime would round off.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from .auth import AuthSession
from .crypto import sha256_b64
from .errors import ProtocolError
from .sessions import check_hash

log = structlog.get_logger("ksefd.ksef.receiving")

WARSAW = ZoneInfo("Europe/Warsaw")
SUBJECT_TYPES = ("Subject1", "Subject2", "Subject3", "SubjectAuthorized")
DATE_TYPES = ("PermanentStorage", "Invoicing", "Issue")
# §14.4: at most 100 days measured in UTC. We stay a minute short, so the server's own clock never tips a
# window over; adjacent windows still chain without gaps because the next one starts at KSeF's checkpoint.
MAX_WINDOW = dt.timedelta(days=100) - dt.timedelta(minutes=1)
OPEN_END_SLACK = dt.timedelta(minutes=5)     # "to" omitted means the server's now, a little after ours
MAX_PAGE_SIZE = 250
# Which metadata field carries the date of each date type (the field to narrow `from` on, §6.1).
DATE_FIELDS = {"PermanentStorage": "permanentStorageDate", "Invoicing": "invoicingDate", "Issue": "issueDate"}
# PROTOCOL.md §4.7 (2.0 and the older 36-character 1.0 format).
KSEF_NUMBER_RE = re.compile(r"^([1-9](\d[1-9]|[1-9]\d)\d{7})-(20[2-9][0-9]|2[1-9]\d{2}|[3-9]\d{3})"
                            r"(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])-([0-9A-F]{6})-?([0-9A-F]{6})-([0-9A-F]{2})$")
_OFFSET_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def check_ksef_number(value: Any) -> str:
    """A KSeF number from the network is untrusted: it becomes a file name and a URL path."""
    if not isinstance(value, str) or not KSEF_NUMBER_RE.fullmatch(value):
        raise ProtocolError(f"{value!r} is not a KSeF number (NIP-YYYYMMDD-XXXXXXXXXXXX-CC)")
    return value


def parse_instant(text: str) -> dt.datetime:
    """An ISO-8601 instant with an offset, any number of fractional digits (KSeF sends 7), as UTC."""
    cleaned = text.strip()
    if not _OFFSET_RE.search(cleaned):
        raise ValueError(f"date {text!r} has no offset; KSeF dates must end in Z or ±HH:MM (PROTOCOL.md §14.4)")
    cleaned = cleaned[:-1] + "+00:00" if cleaned.endswith("Z") else cleaned
    head, dot, rest = cleaned.partition(".")
    if dot:
        digits = re.match(r"\d*", rest)
        count = len(digits.group(0)) if digits else 0
        cleaned = f"{head}.{rest[:count][:6].ljust(6, '0')}{rest[count:]}"
    return dt.datetime.fromisoformat(cleaned).astimezone(dt.UTC)


def format_instant(when: dt.datetime) -> str:
    """A datetime as KSeF reads it: UTC with an explicit +00:00 offset (naive values are refused)."""
    if when.tzinfo is None:
        raise ValueError(f"datetime {when.isoformat()} has no timezone; pass an aware datetime (e.g. UTC)")
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds")


def instant_text(value: str | dt.datetime) -> str:
    """A `from`/`to` value: strings are kept verbatim (KSeF's own 7-digit dates) once checked."""
    if isinstance(value, dt.datetime):
        return format_instant(value)
    parse_instant(value)
    return value.strip()


def day_start(day: str) -> str:
    """The first instant of a calendar date (issueDate, lastIssueDate) in Warsaw time, with its offset."""
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(0), tzinfo=WARSAW)
    return start.isoformat()


def capped_to(date_from: str | dt.datetime, date_to: str | dt.datetime | None, now: dt.datetime
              ) -> str | None:
    """The `to` of a window starting at `date_from`, kept within 100 days (§14.4); None = open end (now)."""
    start = parse_instant(instant_text(date_from))
    limit = start + MAX_WINDOW
    if date_to is None:
        return None if now + OPEN_END_SLACK <= limit else format_instant(limit)
    end = parse_instant(instant_text(date_to))
    return instant_text(date_to) if end <= limit else format_instant(limit)


def query_filters(subject_type: str, date_from: str | dt.datetime, date_to: str | dt.datetime | None = None, *,
                  date_type: str = "PermanentStorage", restrict_to_hwm: bool | None = None,
                  now: dt.datetime | None = None, **extra: Any) -> dict[str, Any]:
    """An `InvoiceQueryFilters` object for metadata queries and exports.

    Defaults follow §6.4: PermanentStorage dates, restricted to the HWM, open end. The window is capped at
    100 days after `date_from`. `extra` adds other filters verbatim (e.g. sellerNip="...")."""
    if subject_type not in SUBJECT_TYPES:
        raise ValueError(f"subject_type {subject_type!r} must be one of {', '.join(SUBJECT_TYPES)}")
    if date_type not in DATE_TYPES:
        raise ValueError(f"date_type {date_type!r} must be one of {', '.join(DATE_TYPES)}")
    date_range: dict[str, Any] = {"dateType": date_type, "from": instant_text(date_from)}
    to = capped_to(date_from, date_to, now or dt.datetime.now(dt.UTC))
    if to is not None:
        date_range["to"] = to
    if date_type == "PermanentStorage" and (restrict_to_hwm is None or restrict_to_hwm):
        date_range["restrictToPermanentStorageHwmDate"] = True
    return {"subjectType": subject_type, "dateRange": date_range, **extra}


@dataclass(frozen=True)
class MetadataPage:
    has_more: bool
    is_truncated: bool
    permanent_storage_hwm_date: str | None
    invoices: list[dict[str, Any]]         # InvoiceMetadata objects as KSeF sent them


@dataclass
class MetadataResult:
    invoices: list[dict[str, Any]] = field(default_factory=list)   # deduplicated by ksefNumber, in order
    permanent_storage_hwm_date: str | None = None                  # of the last query issued
    pages: int = 0                                                  # requests spent (20 per hour!)


def _page(body: Any) -> MetadataPage:
    if not isinstance(body, Mapping) or not isinstance(body.get("invoices"), list):
        raise ProtocolError("POST /invoices/query/metadata answered without an invoices list")
    invoices = [item for item in body["invoices"] if isinstance(item, dict)]
    for item in invoices:
        check_ksef_number(item.get("ksefNumber"))
    hwm = body.get("permanentStorageHwmDate")
    return MetadataPage(bool(body.get("hasMore")), bool(body.get("isTruncated")),
                        hwm if isinstance(hwm, str) else None, invoices)


def _narrowed_from(invoice: Mapping[str, Any], date_type: str) -> str:
    value = invoice.get(DATE_FIELDS[date_type])
    if not isinstance(value, str):
        raise ProtocolError(f"metadata of {invoice.get('ksefNumber')} lacks {DATE_FIELDS[date_type]}")
    return day_start(value) if date_type == "Issue" else instant_text(value)


class Receiver:
    def __init__(self, auth: AuthSession) -> None:
        self.auth = auth

    async def query_page(self, filters: Mapping[str, Any], *, page_offset: int = 0, page_size: int = MAX_PAGE_SIZE,
                         sort_order: str = "Asc") -> MetadataPage:
        """One POST /invoices/query/metadata (InvoiceRead; 8/s, 16/min, 20/h)."""
        if not 10 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size {page_size} must be between 10 and {MAX_PAGE_SIZE}")
        query = {"sortOrder": sort_order, "pageOffset": str(page_offset), "pageSize": str(page_size)}
        # A query only reads: repeating it after a lost answer is harmless.
        response = await self.auth.request("POST", "/invoices/query/metadata", query=query, json=dict(filters),
                                           replay_safe=True, expect=(200,))
        return _page(response.json())

    async def pages(self, filters: Mapping[str, Any], *, page_size: int = MAX_PAGE_SIZE
                    ) -> AsyncIterator[tuple[MetadataPage, list[dict[str, Any]]]]:
        """The §6.1 algorithm, ascending: yields each page with its invoices not seen before.

        hasMore=false ends; hasMore without isTruncated moves to the next page; isTruncated (the 10 000
        record cap) restarts at page 0 from the last record's date, and duplicates are dropped."""
        current = {**filters, "dateRange": dict(filters["dateRange"])}
        date_type = str(current["dateRange"].get("dateType", "PermanentStorage"))
        seen: set[str] = set()
        offset = 0
        while True:
            page = await self.query_page(current, page_offset=offset, page_size=page_size)
            fresh = [i for i in page.invoices if i["ksefNumber"] not in seen]
            seen.update(i["ksefNumber"] for i in fresh)
            yield page, fresh
            if not page.has_more:
                return
            if not page.is_truncated:
                offset += 1
                continue
            if not page.invoices:
                raise ProtocolError("metadata query is truncated but its last page is empty; cannot continue")
            narrowed = _narrowed_from(page.invoices[-1], date_type)
            if narrowed == current["dateRange"]["from"]:
                raise ProtocolError(f"more than 10 000 invoices share the date {narrowed}; the metadata query "
                                    "cannot page past them (use an export)")
            log.info("ksef.metadata_truncated", narrowed_from=narrowed, seen=len(seen))
            current["dateRange"]["from"], offset = narrowed, 0

    async def query_all(self, filters: Mapping[str, Any], *, page_size: int = MAX_PAGE_SIZE,
                        max_pages: int | None = None) -> MetadataResult:
        """Every invoice matching `filters` (stops early after `max_pages` requests, if given)."""
        result = MetadataResult()
        async for page, fresh in self.pages(filters, page_size=page_size):
            result.pages += 1
            result.invoices.extend(fresh)
            result.permanent_storage_hwm_date = page.permanent_storage_hwm_date
            if max_pages is not None and result.pages >= max_pages:
                break
        return result

    async def download(self, ksef_number: str, *, expected_hash: str | None = None) -> bytes:
        """GET /invoices/ksef/{ksefNumber}: the original bytes, checked against x-ms-meta-hash and, when
        given, the metadata's invoiceHash. 21164 = unknown, 21165 = not available yet (retry later)."""
        check_ksef_number(ksef_number)
        response = await self.auth.request("GET", "/invoices/ksef/{ksefNumber}", params={"ksefNumber": ksef_number},
                                           expect=(200,))
        body = check_hash(response, f"invoice {ksef_number}")
        if expected_hash is not None and sha256_b64(body) != expected_hash:
            error = ProtocolError(f"invoice {ksef_number}: the downloaded bytes do not match invoiceHash "
                                  f"{expected_hash}")
            error.retryable = True
            raise error
        return body
