"""Asynchronous invoice exports (PROTOCOL.md §6.3, §6.4, §14.4): POST /invoices/exports, GET
/invoices/exports/{ref} and the pre-signed part downloads under /storage/export.

The selection (receiving.select) and the HWM are fixed when the export starts: invoices in ascending
order of the chosen date up to SimConfig.query_cap (10 000). The package then takes them in that order
until the compressed archive would pass SimConfig.export_max_compressed (1 GB, openapi.json: "Limit
rozmiaru danych (skompresowanych): 1GB"; `_metadata.json` does not count); past either limit it is
truncated and names the last included date (lastIssueDate | lastInvoicingDate |
lastPermanentStorageDate) to continue from. The archive (ZIP or tar.gz, echoed in the required
`package.compressionType`) holds `{ksefNumber}.xml` files and `_metadata.json` = {"invoices":
[InvoiceMetadata]} (only the latter with onlyMetadata), is cut into parts of SimConfig.export_part_size
bytes (50 MB on KSeF) and every part is encrypted separately with the caller's AES key and IV; a part's
download carries `x-ms-meta-hash` (SHA-256 of the encrypted part, openapi.json InvoicePackagePart.url).
Statuses: 100 (until SimConfig.export_delay_s passed on the simulator's clock, then while building),
200, 210 (package expired), 415 (key does not unwrap), 420 (`from` after the HWM with restrict). At
most 10 exports in 100 per context (21182); a subject type the context cannot be is 21181
(receiving.subject_allowed); the status is kept 7 days, then 410.

Records: store table `exports` keyed by the EH reference; until the package is built a record also
holds the selection (invoice reference numbers) and the AES key, so an export caught by a restart
(--state) is built by the restarted simulator. Parts are blobs `export/<ref>/<partName>`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import tarfile
import zipfile
import zlib
from typing import Any

from aiohttp import web

from . import aes, ids, invoice_records, invoices, online, presigned, receiving, spec, waiting
from .clock import iso, parse_iso
from .errors import Gone, KsefException
from .spec import API_PREFIX
from .world import WORLD, World

TABLE = "exports"
MAX_RUNNING = 10
RETENTION = dt.timedelta(days=7)
PACKAGE_TTL = dt.timedelta(days=3)
PART_URL_TTL_S = 3600
STATUS = {100: "Eksport faktur w toku", 200: "Eksport faktur zakończony sukcesem",
          210: "Eksport faktur wygasł i nie jest już dostępny do pobrania",
          415: "Błąd odszyfrowania dostarczonego klucza",
          420: "Zakres filtrowania wykracza poza dostępny zakres danych"}
LAST_DATE = {"Issue": "lastIssueDate", "Invoicing": "lastInvoicingDate", "PermanentStorage": "lastPermanentStorageDate"}
EXTENSIONS = {"Zip": "zip", "TarGz": "tar.gz"}
ZIP_ENTRY_HEADERS = 30 + 46          # a ZIP entry's local and central directory headers, without the name


def _status(code: int, details: list[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"code": code, "description": STATUS[code]}
    if details:
        found["details"] = details
    return found


def _last_date(record: dict[str, Any], date_type: str) -> str:
    return str(record["facts"]["issueDate"] if date_type == "Issue" else record[receiving.DATE_FIELDS[date_type]])


def refresh(world: World, record: dict[str, Any]) -> dict[str, Any]:
    """Status 100 -> 200 once the package is built and the clock passed readyAt; 200 -> 210 once the
    package expired (its parts are dropped)."""
    now = world.clock.now()
    code = record["status"]["code"]
    if code == 100 and record["built"] and now >= parse_iso(record["readyAt"]):
        record["status"] = _status(200)
        record["completedDate"] = iso(now)
        record["packageExpirationDate"] = iso(now + PACKAGE_TTL)
        world.store.put(TABLE, record["referenceNumber"], record)
    elif code == 200 and now >= parse_iso(record["packageExpirationDate"]):
        _drop_parts(world, record)
        record["status"] = _status(210)
        world.store.put(TABLE, record["referenceNumber"], record)
    return record


def _drop_parts(world: World, record: dict[str, Any]) -> None:
    for part in (record.get("package") or {}).get("parts", []):
        world.store.delete_blob(f"export/{record['referenceNumber']}/{part['partName']}")


async def start_export(request: web.Request) -> web.Response:
    """POST /invoices/exports: 201 with the EH reference; the package is built in the background."""
    world = request.app[WORLD]
    caller = world.caller(request)
    body = await spec.json_body(request)
    filters = body["filters"]
    span = receiving.window(world, filters)
    if not receiving.subject_allowed(caller.context_type, filters["subjectType"]):
        raise KsefException(21181, spec.documented_details(request, 21181, filters["subjectType"],
                                                           caller.context_type))
    encryption = online.unwrap_key(world, body["encryption"])
    running = [r for r in world.store.values(TABLE) if r["contextValue"] == caller.context_value
               and refresh(world, r)["status"]["code"] == 100]
    if len(running) >= MAX_RUNNING:
        raise KsefException(21182, spec.documented_details(request, 21182, MAX_RUNNING))
    now = world.clock.now()
    reference = ids.reference_number("EH", now)
    record: dict[str, Any] = {
        "referenceNumber": reference, "contextType": caller.context_type, "contextValue": caller.context_value,
        "dateCreated": iso(now), "readyAt": iso(now + dt.timedelta(seconds=world.config.export_delay_s)),
        "compressionType": body.get("compressionType") or "Zip", "onlyMetadata": bool(body.get("onlyMetadata")),
        "status": _status(100), "built": False, "completedDate": None, "packageExpirationDate": None,
        "package": None}
    if encryption is None:
        record.update(status=_status(415, ["Rozszyfrowanie klucza symetrycznego zakończone błędem."]),
                      completedDate=iso(now))
    elif span.after_hwm:
        record.update(status=_status(420, ["Parametr dateRange.from jest późniejszy niż PermanentStorageHwmDate przy "
                                           "włączonym restrictToPermanentStorageHwmDate."]), completedDate=iso(now))
    else:
        found = receiving.select(world, caller, filters, span)
        cap = world.config.query_cap
        record.update(selection=[r["referenceNumber"] for r in found[:cap]], truncated=len(found) > cap,
                      dateType=span.date_type, encryption=encryption,
                      hwm=iso(span.hwm) if span.date_type == "PermanentStorage" else None)
    world.store.put(TABLE, reference, record)
    if record["status"]["code"] == 100:
        world.spawn(_build(world, reference))
    return web.json_response({"referenceNumber": reference}, status=201)


async def _build(world: World, reference: str) -> None:
    """Wait for readyAt, then archive, split and encrypt the fixed selection (parts in a worker thread)."""
    record = world.store.get(TABLE, reference)
    if record is None:
        return
    await waiting.until(world, parse_iso(record["readyAt"]))
    record = world.store.get(TABLE, reference)
    if record is None or record["built"] or record["status"]["code"] != 100:
        return
    chosen = [r for r in (invoice_records.get(world, ref) for ref in record["selection"]) if r is not None]
    files = [] if record["onlyMetadata"] else [
        (f"{r['ksefNumber']}.xml", invoice_records.invoice_bytes(world, r) or b"") for r in chosen]
    metadata = [invoices.invoice_metadata(r) for r in chosen]
    encryption = record["encryption"]
    key, iv = base64.b64decode(encryption["key"]), base64.b64decode(encryption["iv"])
    count, size, parts = await asyncio.to_thread(
        _package, files, metadata, record["compressionType"], (key, iv), world.config.export_part_size,
        world.config.export_max_compressed)
    suffix = EXTENSIONS[record["compressionType"]]
    listed = []
    for number, (info, encrypted) in enumerate(parts, start=1):
        name = f"{reference}-{number:03d}.{suffix}.aes"
        world.store.put_blob(f"export/{reference}/{name}", encrypted)
        listed.append({"ordinalNumber": number, "partName": name, **info})
    record = world.store.get(TABLE, reference) or record
    record["package"] = _package_info(record, chosen[:count], record["truncated"] or count < len(chosen),
                                      size, listed)
    record["built"] = True
    for spent in ("selection", "encryption"):     # the key is not kept once the package exists
        record.pop(spent, None)
    world.store.put(TABLE, reference, record)
    refresh(world, record)


def _package_info(record: dict[str, Any], included: list[dict[str, Any]], truncated: bool, size: int,
                  parts: list[dict[str, Any]]) -> dict[str, Any]:
    """openapi.json InvoicePackage without the per-request part URLs."""
    package: dict[str, Any] = {"invoiceCount": len(included), "size": size, "parts": parts, "isTruncated": truncated,
                               "compressionType": record["compressionType"]}
    if truncated and included:
        package[LAST_DATE[record["dateType"]]] = _last_date(included[-1], record["dateType"])
    if record.get("hwm"):
        package["permanentStorageHwmDate"] = record["hwm"]
    return package


def _fitting(files: list[tuple[str, bytes]], cap: int) -> int:
    """How many of `files`, in order, fit into `cap` bytes of compressed archive (at least one). An entry
    costs its deflated bytes plus its ZIP headers and name twice; a tar.gz of the same files is smaller
    (the gzip stream also compresses across entries), so the package never passes the cap."""
    worst = sum(n + (n >> 12) + (n >> 14) + 13 + ZIP_ENTRY_HEADERS + 2 * len(name.encode())  # zlib's compressBound
                for name, n in ((name, len(data)) for name, data in files))
    if worst <= cap:
        return len(files)
    total = 0
    for count, (name, data) in enumerate(files):
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        total += len(deflate.compress(data) + deflate.flush()) + ZIP_ENTRY_HEADERS + 2 * len(name.encode())
        if total > cap:
            return max(1, count)
    return len(files)


def _package(files: list[tuple[str, bytes]], metadata: list[dict[str, Any]], compression: str,
             key_iv: tuple[bytes, bytes], part_size: int,
             cap: int) -> tuple[int, int, list[tuple[dict[str, Any], bytes]]]:
    """Fit, archive, split and encrypt (a worker thread): (invoices included, archive size, [(part info,
    encrypted part)]). Without `files` (onlyMetadata) every metadata record is included."""
    count = _fitting(files, cap) if files else len(metadata)
    listing = json.dumps({"invoices": metadata[:count]}, ensure_ascii=False).encode()
    entries = [*files[:count], ("_metadata.json", listing)]
    archive = _targz(entries) if compression == "TarGz" else _zip(entries)
    parts = []
    for start in range(0, len(archive), part_size):
        chunk = archive[start:start + part_size]
        encrypted = aes.encrypt(*key_iv, chunk)
        parts.append(({"partSize": len(chunk), "partHash": invoice_records.b64_sha256(chunk),
                       "encryptedPartSize": len(encrypted), "encryptedPartHash": invoice_records.b64_sha256(encrypted)},
                      encrypted))
    return count, len(archive), parts


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buffer.getvalue()


def _targz(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def export_status(request: web.Request) -> web.Response:
    """GET /invoices/exports/{ref} (InvoiceExportStatusResponse)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    reference = request.match_info["referenceNumber"]
    record = world.store.get(TABLE, reference)
    if record is None or record["contextValue"] != caller.context_value:
        raise KsefException(21175, [f"Eksport o numerze referencyjnym {reference} nie istnieje."])
    now = world.clock.now()
    if now >= parse_iso(record["dateCreated"]) + RETENTION:
        _drop_parts(world, record)
        raise Gone("Operacja wygasła i nie jest już dostępna.")
    refresh(world, record)
    body: dict[str, Any] = {"status": record["status"]}
    for name in ("completedDate", "packageExpirationDate"):
        if record.get(name) and record["status"]["code"] in (200, 210, 415, 420):
            body[name] = record[name]
    if record["status"]["code"] == 200:
        body["package"] = _package_view(world, request, record)
    return web.json_response(body)


def _package_view(world: World, request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    until = parse_iso(record["packageExpirationDate"]) - world.clock.now()
    ttl = max(1, min(PART_URL_TTL_S, int(until.total_seconds())))
    parts = []
    for part in record["package"]["parts"]:
        url, expires = presigned.url(world, request, f"export/{record['referenceNumber']}/{part['partName']}",
                                     method="GET", ttl_s=ttl)
        parts.append({**part, "method": "GET", "url": url, "expirationDate": iso(expires)})
    return {**record["package"], "parts": parts}


async def download_part(request: web.Request) -> web.Response:
    """GET of a pre-signed part URL: no Authorization header, not rate limited (§6.3)."""
    world = request.app[WORLD]
    presigned.verify(world, request)
    data = world.store.get_blob(f"export/{request.match_info['reference']}/{request.match_info['name']}")
    if data is None:
        body = ('<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
                "<Message>The specified blob does not exist.</Message></Error>")
        return web.Response(status=404, text=body, content_type="application/xml")
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"x-ms-meta-hash": invoice_records.b64_sha256(data)})


async def resume(app: web.Application) -> None:
    """At startup (--state): build the packages of exports that were still in status 100."""
    world = app[WORLD]
    for record in world.store.values(TABLE):
        if record["status"]["code"] == 100 and not record["built"]:
            world.spawn(_build(world, record["referenceNumber"]))


def register(app: web.Application) -> None:
    app.on_startup.append(resume)
    app.router.add_post(f"{API_PREFIX}/invoices/exports", start_export)
    app.router.add_get(f"{API_PREFIX}/invoices/exports/{{referenceNumber}}", export_status)
    app.router.add_get(f"{presigned.PREFIX}export/{{reference}}/{{name}}", download_part)
