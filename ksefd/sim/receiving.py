"""Receiving invoices (PROTOCOL.md §6, §14.4): the metadata query, the download of one invoice, and the
selection logic exports.py shares.

* Who sees what: an accepted invoice belongs to every context that is a party to it. subjectType
  Subject1 = seller (Podmiot1 NIP), Subject2 = buyer (Podmiot2 NIP), Subject3 = a third subject (NIP,
  or InternalId equal to the context), SubjectAuthorized = PodmiotUpowazniony; the NIP of an InternalId
  or NipVatUe context is its NIP part. So an invoice one company sends to another appears in the
  buyer's Subject2 view.
* An invoice is readable from its permanentStorageDate on (before that: hidden from queries, 21165
  for a download); the fault switch `late` pushes a share of invoices later than that, behind the HWM.
* dateRange: `from` and `to` inclusive, `to` omitted = now, at most 100 days in UTC (21405, §14.4).
* permanentStorageHwmDate (reported for dateType PermanentStorage): the storage's HWM is now -
  SimConfig.hwm_lag_s; a query whose `to` lies before it gets `to` itself ("for older periods it agrees
  with the query's conditions", openapi.json). openapi.json also says the value "is constant for all pages
  of the same query and depends neither on paging nor on sorting": under PRD limits (16/min, 20/h) the
  pages of one query are minutes or hours apart, so a clock-derived HWM would move between them. The
  HWM is therefore pinned per query (store table `hwm_pins`, keyed by the context and the filters):
  pageOffset 0 starts a query and pins the current HWM, later pages (any pageSize or sortOrder) reuse
  the pin. An export fixes its HWM when it starts. restrictToPermanentStorageHwmDate caps the selection
  at that HWM, and a `from` after it is 21183 (query) or export status 420.
* Context types [INFER]: an InternalId context (a VAT group member or a JST unit, `NIP-5 digits`) is
  named on invoices only as a Podmiot3 IDWew, so it sees Subject3 and nothing else; exports for another
  subject type there are 400 21181 ("Nie można wyeksportować paczki faktur dla wybranego podmiotu ...
  i zalogowanego identyfikatora kontekstu ..."), metadata queries simply find nothing.
* At most SimConfig.query_cap (10 000) records per filter set, in ascending (or the query's) order of
  the chosen date; beyond it `isTruncated` (query) or a truncated package (export).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from . import faults, invoice_records, invoices, spec
from .clock import WARSAW, iso, parse_iso
from .errors import KsefException
from .security import Caller
from .spec import API_PREFIX
from .world import WORLD, World

MAX_RANGE = dt.timedelta(days=100)
PINS = "hwm_pins"
PIN_TTL = dt.timedelta(hours=24)      # long enough to page through 10 000 records at 20 pages per hour
DATE_FIELDS = {"Issue": "issueDate", "Invoicing": "invoicingDate", "PermanentStorage": "permanentStorageDate"}
AMOUNTS = {"Brutto": "grossAmount", "Netto": "netAmount", "Vat": "vatAmount"}


def hwm(world: World) -> dt.datetime:
    """The storage's HWM: everything stored at or before it is final (§6.1)."""
    return world.clock.now() - dt.timedelta(seconds=world.config.hwm_lag_s)


def _date(value: str, where: str) -> dt.datetime:
    try:
        return parse_iso(value)
    except ValueError:
        raise KsefException(21405, [f"{where}: {value!r} nie jest datą ISO-8601 (użyj np. "
                                    "2026-01-31T00:00:00Z lub jawnego przesunięcia)."]) from None


@dataclass(frozen=True)
class Window:
    date_type: str
    start: dt.datetime
    end: dt.datetime | None            # inclusive; None: open (now)
    hwm: dt.datetime
    restrict: bool

    @property
    def after_hwm(self) -> bool:
        return self.restrict and self.start > self.hwm

    def at(self, storage_hwm: dt.datetime) -> Window:
        """This window with the storage HWM of another moment (a pinned one): never later than `to`."""
        return replace(self, hwm=storage_hwm if self.end is None else min(self.end, storage_hwm))


def window(world: World, filters: dict[str, Any]) -> Window:
    """The filters' date window, after the 100-day rule, with the current HWM; 21405 on a bad range."""
    date_range = filters["dateRange"]
    start = _date(date_range["from"], "dateRange.from")
    end = _date(date_range["to"], "dateRange.to") if date_range.get("to") else None
    now = world.clock.now()
    if (end or now) < start:
        raise KsefException(21405, ["dateRange: data 'to' jest wcześniejsza niż 'from'."])
    if (end or now) - start > MAX_RANGE:
        raise KsefException(21405, [f"dateRange: zakres od {iso(start)} do {iso(end or now)} przekracza 100 dni "
                                    "(liczonych w UTC); podziel go na krótsze okna."])
    # openapi.json: restrictToPermanentStorageHwmDate "applies only to queries with dateType = PermanentStorage".
    restrict = bool(date_range.get("restrictToPermanentStorageHwmDate"))
    restrict = restrict and date_range["dateType"] == "PermanentStorage"
    span = Window(date_range["dateType"], start, end, hwm(world), restrict)
    return span.at(span.hwm)


def pinned_hwm(world: World, caller: Caller, filters: dict[str, Any], new_query: bool) -> dt.datetime:
    """The storage HWM of this query (see the module doc): pinned by its first page, reused by the others."""
    text = json.dumps([caller.context_type, caller.context_value, filters], sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(text.encode()).hexdigest()
    now = world.clock.now()
    pin = world.store.get(PINS, key)
    if pin is not None and not new_query and now - parse_iso(pin["pinnedAt"]) < PIN_TTL:
        return parse_iso(pin["hwm"])
    for old_key, old in world.store.items(PINS):
        if now - parse_iso(old["pinnedAt"]) >= PIN_TTL:
            world.store.delete(PINS, old_key)
    current = hwm(world)
    world.store.put(PINS, key, {"hwm": iso(current), "pinnedAt": iso(now)})
    return current


def date_of(record: dict[str, Any], date_type: str) -> dt.datetime:
    if date_type == "Issue":   # a day: its start in Warsaw time
        day = dt.date.fromisoformat(record["facts"]["issueDate"])
        return dt.datetime.combine(day, dt.time(), WARSAW).astimezone(dt.UTC)
    return parse_iso(record[DATE_FIELDS[date_type]])


# who is a party -----------------------------------------------------------------------------------

def subject_allowed(context_type: str, subject_type: str) -> bool:
    """Whether a context of this type can be this party at all (module doc, [INFER])."""
    return context_type != "InternalId" or subject_type == "Subject3"


def _party(facts: dict[str, Any], subject_type: str, context_type: str, context_value: str) -> bool:
    if not subject_allowed(context_type, subject_type):
        return False
    nip = invoices.context_nip(context_type, context_value)
    if context_type == "InternalId":
        return any(s["identifier"] == {"type": "InternalId", "value": context_value} for s in facts["thirdSubjects"])
    if subject_type == "Subject1":
        return nip is not None and facts["sellerNip"] == nip
    if subject_type == "Subject2":
        buyer = facts["buyer"]["identifier"]
        return nip is not None and buyer.get("type") == "Nip" and buyer.get("value") == nip
    if subject_type == "Subject3":
        return nip is not None and any(s["identifier"] == {"type": "Nip", "value": nip} for s in facts["thirdSubjects"])
    authorized = facts.get("authorizedSubject") or {}
    return nip is not None and authorized.get("nip") == nip


def is_party(record: dict[str, Any], caller: Caller) -> bool:
    return any(_party(record["facts"], subject, caller.context_type, caller.context_value)
               for subject in ("Subject1", "Subject2", "Subject3", "SubjectAuthorized"))


def visible(world: World, record: dict[str, Any], now: dt.datetime) -> bool:
    since = faults.visible_from(world, record)
    return since is not None and since <= now


# filters ---------------------------------------------------------------------------------------------

def _amount_ok(facts: dict[str, Any], amount: dict[str, Any] | None) -> bool:
    if not amount:
        return True
    value = float(facts[AMOUNTS[amount["type"]]])
    low, high = amount.get("from"), amount.get("to")
    return (low is None or value >= low) and (high is None or value <= high)


def _buyer_ok(facts: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    if not wanted:
        return True
    identifier = facts["buyer"]["identifier"]
    return identifier.get("type") == wanted["type"] and (not wanted.get("value") or
                                                         identifier.get("value") == wanted["value"])


def matches(record: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The InvoiceQueryFilters other than subjectType and dateRange."""
    facts = record["facts"]
    checks = (
        ("ksefNumber", lambda v: record["ksefNumber"] == v),
        ("invoiceNumber", lambda v: facts["invoiceNumber"] == v),
        ("sellerNip", lambda v: facts["sellerNip"] == v),
        ("currencyCodes", lambda v: not v or facts["currency"] in v),
        ("invoicingMode", lambda v: record["invoicingMode"] == v),
        ("isSelfInvoicing", lambda v: facts["isSelfInvoicing"] == v),
        ("formType", lambda v: facts["formCode"]["value"] == v),
        ("invoiceTypes", lambda v: not v or facts["invoiceType"] in v),
        ("hasAttachment", lambda v: facts["hasAttachment"] == v),
    )
    for name, check in checks:
        if filters.get(name) is not None and not check(filters[name]):
            return False
    return _amount_ok(facts, filters.get("amount")) and _buyer_ok(facts, filters.get("buyerIdentifier"))


def select(world: World, caller: Caller, filters: dict[str, Any], span: Window,
           descending: bool = False) -> list[dict[str, Any]]:
    """Every readable invoice of the caller's context matching the filters, sorted by the window's date."""
    now = world.clock.now()
    found: list[tuple[dt.datetime, str, dict[str, Any]]] = []
    for record in _candidates(world):
        if not _party(record["facts"], filters["subjectType"], caller.context_type, caller.context_value):
            continue
        if not visible(world, record, now) or not matches(record, filters):
            continue
        when = date_of(record, span.date_type)
        if when < span.start or (span.end is not None and when > span.end):
            continue
        if span.restrict and parse_iso(record["permanentStorageDate"]) > span.hwm:
            continue
        found.append((when, record["permanentStorageDate"], record))
    found.sort(key=lambda item: (item[0], item[1]), reverse=descending)
    return [record for _, _, record in found]


def _candidates(world: World) -> Iterable[dict[str, Any]]:
    return (r for r in invoice_records.accepted(world) if r.get("facts") and r.get("permanentStorageDate"))


# POST /invoices/query/metadata ---------------------------------------------------------------------

async def query_metadata(request: web.Request) -> web.Response:
    """POST /invoices/query/metadata (QueryInvoicesMetadataResponse, §6.1)."""
    world = request.app[WORLD]
    caller = world.caller(request)        # also checks sortOrder, pageOffset and pageSize (spec.check_parameters)
    filters = await spec.json_body(request)
    order = request.query.get("sortOrder", "Asc")
    offset, size = int(request.query.get("pageOffset", "0")), int(request.query.get("pageSize", "10"))
    span = window(world, filters)
    span = span.at(pinned_hwm(world, caller, filters, new_query=offset == 0))
    if span.after_hwm:
        raise KsefException(21183, ["Parametr dateRange.from jest późniejszy niż PermanentStorageHwmDate przy "
                                    "włączonym restrictToPermanentStorageHwmDate."])
    records = select(world, caller, filters, span, descending=order == "Desc")
    cap = world.config.query_cap
    capped = records[:cap]
    page = capped[offset * size:(offset + 1) * size]
    body: dict[str, Any] = {"hasMore": min((offset + 1) * size, cap) < len(records),
                            "isTruncated": len(records) > cap and (offset + 1) * size >= cap,
                            "invoices": [invoices.invoice_metadata(r) for r in page]}
    if span.date_type == "PermanentStorage":
        body["permanentStorageHwmDate"] = iso(span.hwm)
    return web.json_response(body)


# GET /invoices/ksef/{ksefNumber} --------------------------------------------------------------------

async def download(request: web.Request) -> web.Response:
    """The exact original bytes and their SHA-256 in `x-ms-meta-hash` (§6.2)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    number = request.match_info["ksefNumber"]          # its format was checked by world.caller (21405)
    record = invoice_records.by_ksef_number(world, number)
    if record is None or not record.get("facts") or not is_party(record, caller):
        raise KsefException(21164, [f"Faktura o numerze KSeF {number} nie została znaleziona."])
    data = invoice_records.invoice_bytes(world, record)
    if data is None or not visible(world, record, world.clock.now()):
        raise KsefException(21165, [f"Faktura o numerze KSeF {number} została przetworzona, ale nie jest jeszcze "
                                    "dostępna do pobrania. Spróbuj ponownie później."])
    return web.Response(body=data, content_type="application/xml", headers={"x-ms-meta-hash": record["invoiceHash"]})


def register(app: web.Application) -> None:
    """The metadata query and the download; exports.py (built on this module's selection) registers itself."""
    app.router.add_post(f"{API_PREFIX}/invoices/query/metadata", query_metadata)
    app.router.add_get(f"{API_PREFIX}/invoices/ksef/{{ksefNumber}}", download)
