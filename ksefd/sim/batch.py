"""Batch sessions (PROTOCOL.md §5): open with the package description, upload the encrypted parts to
pre-signed PUT URLs (no bearer; 20 min x number of parts), close, then process in the background.

Open (POST /sessions/batch) checks synchronously what the description alone shows: at most 50 parts
(21161), each part at most 100 MB before encryption (21157), ordinals 1..n. Close (POST
/sessions/batch/{ref}/close) checks that every declared part arrived (21205) with its declared size
(21157), within the upload window (21208, the session is cancelled: 440). Processing then verifies
each encrypted part's hash (405), decrypts each part separately with the session key and IV
(AES-256-CBC, PKCS#7, no IV prefix; 435), joins them, checks the whole archive's size and hash (405),
unpacks ZIP or tar.gz per `compressionType` (430), refuses more invoices than the context allows
(420; 10 000 by default) and hands every file to invoices.submit exactly like an online session does:
each invoice judged on its own, `invoiceFileName` echoed, invoicingDate = the session's opening time,
attachments allowed when enabled for the NIP. The session then ends through sessions.begin_closing
(200 with UPO pages, 445 with no valid invoice, 440 with none at all).

Processing waits SimConfig.processing_delay_s first (KSeF takes its time too; status 150 is observable).

Session records are sessions.py's, with `batchFile` (the declared package) and `uploadDeadline`.
Parts are blobs `batch/<ref>/<ordinal>`, dropped once every invoice has been handed over (or the
package failed). A session in 150 that is not yet closing is a package still being processed: a
simulator restarted with --state processes it again, skipping the invoices it already recorded (a
kill -9 may come between two of them), so every file becomes exactly one invoice.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import tarfile
import zipfile
import zlib
from typing import Any

import structlog
from aiohttp import web

from . import aes, invoice_records, invoices, online, presigned, sessions, spec
from .clock import iso, parse_iso
from .errors import KsefException
from .permissions import attachments_allowed
from .spec import API_PREFIX
from .world import WORLD, World

log = structlog.get_logger("ksefd.sim.batch")

MAX_PARTS = 50
MAX_PART_PLAIN = 100_000_000                 # 100 MB (10^6 bytes, §7) before encryption
MAX_PART_ENCRYPTED = MAX_PART_PLAIN + 16     # PKCS#7 adds one block at most
WINDOW_PER_PART_S = 20 * 60
BLOB_TYPE = "BlockBlob"


def _blob(reference: str, ordinal: int) -> str:
    return f"batch/{reference}/{ordinal}"


async def _check_part_count(request: web.Request) -> None:
    """21161 before the schema check, whose maxItems would otherwise answer 21405 (openapi.json 400)."""
    try:
        parts = json.loads(await request.read())["batchFile"]["fileParts"]
    except (ValueError, KeyError, TypeError):
        return            # json_body reports malformed bodies with 21405
    if isinstance(parts, list) and len(parts) > MAX_PARTS:
        raise KsefException(21161, [f"Zadeklarowano {len(parts)} części pakietu; dozwolonych jest najwyżej "
                                    f"{MAX_PARTS}."])


def _check_parts(parts: list[dict[str, Any]]) -> None:
    ordinals = sorted(int(p["ordinalNumber"]) for p in parts)
    if ordinals != list(range(1, len(parts) + 1)):
        raise KsefException(21405, [f"batchFile.fileParts: numery porządkowe {ordinals} muszą być kolejnymi "
                                    f"liczbami 1..{len(parts)}, bez powtórzeń."])
    for part in parts:
        size = int(part["fileSize"])
        if size > MAX_PART_ENCRYPTED or size % 16:
            raise KsefException(21157, [f"Część {part['ordinalNumber']}: rozmiar {size} B nie jest rozmiarem "
                                        f"zaszyfrowanej części o najwyżej {MAX_PART_PLAIN} B przed szyfrowaniem "
                                        "(AES-256-CBC z dopełnieniem PKCS#7 daje wielokrotność 16 B)."])


async def open_session(request: web.Request) -> web.Response:
    """POST /sessions/batch: 201 with one pre-signed PUT per declared part (PROTOCOL.md §5.4)."""
    world = request.app[WORLD]
    caller = world.caller(request)
    await _check_part_count(request)
    body = await spec.json_body(request)
    online.check_form_code(body["formCode"])
    package = body["batchFile"]
    parts = sorted(package["fileParts"], key=lambda p: int(p["ordinalNumber"]))
    _check_parts(parts)
    encryption = online.unwrap_key(world, body["encryption"])
    session = sessions.create(world, caller, session_type="Batch", form_code=body["formCode"], encryption=encryption,
                              valid_until=None, offline_mode=bool(body.get("offlineMode", False)),
                              subject_identifier_validation=online.FEATURE_SUBJECT_VALIDATION in
                              online.features(request))
    window_s = WINDOW_PER_PART_S * len(parts)
    session["batchFile"] = {"fileSize": package["fileSize"], "fileHash": package["fileHash"],
                            "compressionType": package.get("compressionType") or "Zip",
                            "fileParts": [{k: p[k] for k in ("ordinalNumber", "fileSize", "fileHash")} for p in parts]}
    session["uploadDeadline"] = iso(world.clock.now() + dt.timedelta(seconds=window_s))
    world.store.put(sessions.TABLE, session["referenceNumber"], session)
    uploads = []
    for part in parts:
        url, _ = presigned.url(world, request, _blob(session["referenceNumber"], part["ordinalNumber"]),
                               method="PUT", ttl_s=window_s)
        uploads.append({"ordinalNumber": part["ordinalNumber"], "method": "PUT", "url": url,
                        "headers": {"x-ms-blob-type": BLOB_TYPE}})
    log.info("sim.batch.opened", reference=session["referenceNumber"], parts=len(parts))
    return web.json_response({"referenceNumber": session["referenceNumber"], "partUploadRequests": uploads},
                             status=201)


def _storage_error(status: int, code: str, message: str) -> web.Response:
    """Blob storage's own error shape (Azure: XML `Error` with Code and Message)."""
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")


async def upload_part(request: web.Request) -> web.Response:
    """PUT to a pre-signed part URL: no Authorization header, inside the window, BlockBlob (§5.5)."""
    world = request.app[WORLD]
    presigned.verify(world, request)
    if request.headers.get("x-ms-blob-type") != BLOB_TYPE:
        return _storage_error(400, "MissingRequiredHeader", f"Send the header x-ms-blob-type: {BLOB_TYPE}.")
    reference, ordinal = request.match_info["reference"], int(request.match_info["ordinal"])
    session = world.store.get(sessions.TABLE, reference)
    if session is None or session["status"]["code"] != 100 or session["closing"]:
        return _storage_error(403, "AuthorizationFailure", "The batch session no longer accepts uploads.")
    data = await request.read()
    world.store.put_blob(_blob(reference, ordinal), data)
    md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
    return web.Response(status=201, headers={"Content-MD5": md5, "ETag": f'"0x{hashlib.sha1(data).hexdigest()[:16]}"'})


async def close_session(request: web.Request) -> web.Response:
    """POST /sessions/batch/{ref}/close: 204, then processing in the background (§5.6)."""
    world = request.app[WORLD]
    session = sessions.find(world, world.caller(request), request.match_info["referenceNumber"], "Batch")
    reference, code = session["referenceNumber"], session["status"]["code"]
    deadline = session.get("uploadDeadline")
    if code in (100, 440) and not session["closing"] and deadline and world.clock.now() >= parse_iso(deadline):
        if code == 100:
            sessions.set_status(world, session, 440, ["Przekroczono czas wysyłki"])
        raise KsefException(21208, ["Sesja anulowana, przekroczony czas wysyłki."])
    if code != 100 or session["closing"]:
        raise KsefException(21180, [f"Status sesji {code} uniemożliwia jej zamknięcie."])
    for part in session["batchFile"]["fileParts"]:
        data = world.store.get_blob(_blob(reference, part["ordinalNumber"]))
        if data is None:
            raise KsefException(21205, [f"Nie przesłano zadeklarowanej '{part['ordinalNumber']}' części pliku."])
        if len(data) != part["fileSize"]:
            raise KsefException(21157, [f"Zadeklarowany rozmiar części '{part['ordinalNumber']}' nie zgadza się z "
                                        f"rzeczywistym ({part['fileSize']} B zadeklarowano, {len(data)} B przesłano)."])
    session["dateClosed"] = iso(world.clock.now())
    sessions.set_status(world, session, 150)
    world.spawn(process(world, reference))
    return web.Response(status=204)


# processing -----------------------------------------------------------------------------------------

class PackageError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


def unpack(session: dict[str, Any], parts: list[bytes]) -> list[tuple[str, bytes]]:
    """Verify, decrypt, join and unpack the package (runs in a worker thread); PackageError on failure."""
    declared = session["batchFile"]
    key, iv = base64.b64decode(session["encryption"]["key"]), base64.b64decode(session["encryption"]["iv"])
    plain: list[bytes] = []
    for part, data in zip(declared["fileParts"], parts, strict=True):
        if invoice_records.b64_sha256(data) != part["fileHash"]:
            raise PackageError(405, f"Skrót części {part['ordinalNumber']} nie zgadza się z zadeklarowanym "
                                    "(SHA-256 zaszyfrowanej części, Base64).")
        try:
            plain.append(aes.decrypt(key, iv, data))
        except ValueError:
            raise PackageError(435, f"Nie udało się odszyfrować części {part['ordinalNumber']} kluczem i wektorem "
                                    "IV sesji (każda część szyfrowana osobno, bez IV na początku).") from None
    archive = b"".join(plain)
    if len(archive) != declared["fileSize"]:
        raise PackageError(405, f"Rozmiar paczki po odszyfrowaniu i złączeniu części ({len(archive)} B) nie zgadza "
                                f"się z zadeklarowanym ({declared['fileSize']} B).")
    if invoice_records.b64_sha256(archive) != declared["fileHash"]:
        raise PackageError(405, "Skrót paczki po odszyfrowaniu i złączeniu części nie zgadza się z zadeklarowanym.")
    try:
        return _untar(archive) if declared["compressionType"] == "TarGz" else _unzip(archive)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError) as exc:
        raise PackageError(430, f"Nie udało się rozpakować archiwum {declared['compressionType']}: {exc}") from None


def _unzip(archive: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist() if not info.is_dir()]


def _untar(archive: bytes) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                files.append((member.name, handle.read()))
    return files


def _drop_parts(world: World, session: dict[str, Any]) -> None:
    for part in session["batchFile"]["fileParts"]:
        world.store.delete_blob(_blob(session["referenceNumber"], part["ordinalNumber"]))


def _fail(world: World, session: dict[str, Any], code: int, detail: str) -> None:
    log.info("sim.batch.failed", reference=session["referenceNumber"], code=code, detail=detail)
    session["closing"] = True
    sessions.set_status(world, session, code, [detail])


async def process(world: World, reference: str) -> None:
    await asyncio.sleep(world.config.processing_delay_s)
    session = world.store.get(sessions.TABLE, reference)
    if session is None or session["status"]["code"] != 150 or session["closing"]:
        return
    parts = [world.store.get_blob(_blob(reference, p["ordinalNumber"])) or b""
             for p in session["batchFile"]["fileParts"]]
    try:
        files = await asyncio.to_thread(unpack, session, parts)
    except PackageError as exc:
        _drop_parts(world, session)
        _fail(world, session, exc.code, exc.detail)
        return
    parts.clear()
    limit = sessions.limits(world, session)["maxInvoices"]
    if len(files) > limit:
        _drop_parts(world, session)
        _fail(world, session, 420, f"Paczka zawiera {len(files)} faktur; limit sesji wsadowej w tym kontekście "
                                   f"wynosi {limit}.")
        return
    await _submit_all(world, session, files)
    _drop_parts(world, session)
    log.info("sim.batch.queued", reference=reference, invoices=len(files))
    sessions.begin_closing(world, session)


async def _submit_all(world: World, session: dict[str, Any], files: list[tuple[str, bytes]]) -> None:
    """Hand every file to invoices.submit, after those a previous run (before a restart) already handed over."""
    nip = invoices.context_nip(session["contextType"], session["contextValue"])
    allow_attachments = nip is not None and attachments_allowed(world.store, nip)
    opened = parse_iso(session["dateCreated"])      # §5.7: invoicingDate = the session's opening time
    done = len(invoice_records.for_session(world, session["referenceNumber"]))
    session["invoiceCount"] = done                  # ordinals go on from the last recorded invoice
    for position, (name, data) in enumerate(files[done:], start=done + 1):
        await invoices.submit(world, session, data, offline_mode=bool(session["offlineMode"]), invoicing_date=opened,
                              file_name=name, allow_attachments=allow_attachments)
        if position % 500 == 0:
            await asyncio.sleep(0)      # let status polls in while a big package is queued


async def resume(app: web.Application) -> None:
    """At startup (--state): process again the packages that were being processed (module doc)."""
    world = app[WORLD]
    for session in world.store.values(sessions.TABLE):
        if session["sessionType"] == "Batch" and session["status"]["code"] == 150 and not session["closing"]:
            world.spawn(process(world, session["referenceNumber"]))


def register(app: web.Application) -> None:
    app.on_startup.append(resume)
    app.router.add_post(f"{API_PREFIX}/sessions/batch", open_session)
    app.router.add_post(f"{API_PREFIX}/sessions/batch/{{referenceNumber}}/close", close_session)
    app.router.add_put(f"{presigned.PREFIX}batch/{{reference}}/{{ordinal:\\d+}}", upload_part)
