"""Batch sessions (PROTOCOL.md §5, §14.3): open, upload the parts, close, wait, read per-invoice results.

    prepared = await prepare_batch_async(invoices, workdir)          # batch_archive.py: ZIP/tar.gz, parts, AES
    outcome = await BatchSender(ctx.auth, ctx.client.public_keys).send(prepared)
    for result in outcome.results:                                     # one per invoice we put in the archive
        result.entry.file_name, result.ksef_number, result.status_code

Each step is public too, so the daemon can persist the session reference before `close` (processing starts
only at close: a batch abandoned before it is never processed) and read results after a restart with only
the reference and the manifest (`results(reference, entries)`).

* Open wraps the session key with the current SymmetricKeyEncryption key; on 21470 the same key is wrapped
  again with the re-fetched one (the parts are already encrypted with it, §2.1).
* Parts go to the pre-signed URLs with exactly the method and headers KSeF gave, never a Bearer header, in
  parallel (`upload_concurrency`), each retried as a whole by the transport (same bytes to the same URL).
* Results are matched to what we sent by `invoiceFileName`, then by `invoiceHash` (§5 recommendation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from .auth import AuthSession
from .batch_archive import EncryptedPart, ManifestEntry, PreparedBatch
from .clock import Sleep, poll, real_sleep
from .crypto import SYMMETRIC_KEY_ENCRYPTION, PublicKey, PublicKeys, sha256_b64
from .errors import KsefError, KsefException, ProtocolError
from .models import SessionInvoice, SessionStatus
from .online import FA3, FormCode
from .sessions import SessionQueries

log = structlog.get_logger("ksefd.ksef.batch")

IN_PROGRESS = frozenset({100, 150, 170})
SESSION_CLOSED_OR_FORBIDDEN = 21180


@dataclass(frozen=True)
class BatchOptions:
    upload_concurrency: int = 2        # parts in flight; memory use is about this many parts
    poll_first: float = 0.5            # seconds before the first status poll after close
    poll_factor: float = 1.5
    poll_max: float = 10.0             # GET /sessions/{ref} is sessionMisc: 1200/h, so ≥ 3 s on average is plenty
    wait_budget: float = 6 * 3600.0    # give up waiting for processing after this long (raise BatchTimeout)
    invoice_page_size: int = 1000      # GET /sessions/{ref}/invoices pageSize (10..1000)
    features: tuple[str, ...] = ()     # X-KSeF-Feature on open, e.g. "subject-identifier-validation" (§14.3)


@dataclass(frozen=True)
class PartUpload:
    ordinal_number: int
    method: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class OpenedBatch:
    reference_number: str
    uploads: list[PartUpload]
    public_key_id: str


@dataclass(frozen=True)
class BatchInvoiceResult:
    entry: ManifestEntry               # what we sent
    invoice: SessionInvoice | None     # what KSeF says about it; None: KSeF did not list it

    @property
    def status_code(self) -> int | None:
        return None if self.invoice is None else self.invoice.status.code

    @property
    def accepted(self) -> bool:
        return self.invoice is not None and self.invoice.is_accepted

    @property
    def ksef_number(self) -> str | None:
        return None if self.invoice is None else self.invoice.ksef_number


@dataclass(frozen=True)
class BatchOutcome:
    reference_number: str
    status: SessionStatus
    results: list[BatchInvoiceResult]
    unmatched: list[SessionInvoice]    # listed by KSeF but matching nothing we sent (should never happen)

    @property
    def session_ok(self) -> bool:
        """Session status 200. Even then single invoices may be rejected (each is judged on its own, §5.7)."""
        return self.status.status.code == 200


class BatchTimeout(KsefError):
    """The batch was closed but KSeF did not finish processing within `wait_budget`; poll again later."""

    retryable = True


class BatchSender:
    def __init__(self, auth: AuthSession, keys: PublicKeys, form_code: FormCode = FA3, *,
                 sleep: Sleep = real_sleep, options: BatchOptions | None = None) -> None:
        self.auth = auth
        self.keys = keys
        self.form_code = form_code
        self.sleep = sleep
        self.options = options or BatchOptions()
        self.sessions = SessionQueries(auth)

    async def send(self, prepared: PreparedBatch, *, offline_mode: bool = False) -> BatchOutcome:
        """Open, upload, close, wait and read every invoice's result."""
        opened = await self.open(prepared, offline_mode=offline_mode)
        await self.upload(prepared, opened)
        await self.close(opened.reference_number)
        status = await self.wait(opened.reference_number)
        return await self.outcome(opened.reference_number, prepared.entries, status)

    async def open(self, prepared: PreparedBatch, *, offline_mode: bool = False) -> OpenedBatch:
        """POST /sessions/batch (201). `offline_mode` flags every invoice of the session as offline (§8.2)."""
        headers = {"X-KSeF-Feature": ", ".join(self.options.features)} if self.options.features else None

        async def attempt(key: PublicKey) -> OpenedBatch:
            body = {"formCode": self.form_code.as_json(), "batchFile": prepared.batch_file(),
                    "encryption": key.encryption_info(prepared.key), "offlineMode": offline_mode}
            # A repeated open after a lost answer leaves an unused session that KSeF cancels (440): harmless.
            response = await self.auth.request("POST", "/sessions/batch", json=body, headers=headers,
                                               replay_safe=True, expect=(201,))
            return _opened(response.json(), key.public_key_id, prepared.parts)

        opened = await self.keys.with_key(SYMMETRIC_KEY_ENCRYPTION, attempt)
        log.info("ksef.batch_opened", context=self.auth.context.key, session=opened.reference_number,
                 parts=len(opened.uploads), invoices=len(prepared.entries), bytes=prepared.archive_size)
        return opened

    async def upload(self, prepared: PreparedBatch, opened: OpenedBatch) -> None:
        """PUT (or whatever KSeF says) every part to its pre-signed URL; not rate limited (§5.5)."""
        parts = {part.ordinal_number: part for part in prepared.parts}
        limit = asyncio.Semaphore(max(1, self.options.upload_concurrency))

        async def one(upload: PartUpload) -> None:
            async with limit:
                await self._upload_part(parts[upload.ordinal_number], upload)

        try:
            async with asyncio.TaskGroup() as group:
                for upload in opened.uploads:
                    group.create_task(one(upload))
        except ExceptionGroup as failed:      # the first failure says what went wrong; the rest were cancelled
            raise failed.exceptions[0] from failed
        log.info("ksef.batch_uploaded", session=opened.reference_number, parts=len(opened.uploads))

    async def _upload_part(self, part: EncryptedPart, upload: PartUpload) -> None:
        data = await asyncio.to_thread(part.path.read_bytes)
        if len(data) != part.size or sha256_b64(data) != part.sha256:
            raise ProtocolError(f"batch part {part.ordinal_number} changed on disk since it was declared "
                                f"({part.path}); prepare the batch again")
        # Exactly KSeF's method and headers, nothing else: no Authorization (§5.5, §13.7).
        await self.auth.transport.presigned(upload.method, upload.url, body=data, headers=upload.headers,
                                            expect=(200, 201))

    async def close(self, reference_number: str) -> None:
        """POST /sessions/batch/{ref}/close (204): processing starts now (§5.6). A repeat after a lost answer
        gets 21180, which means it is already closed."""
        try:
            await self.auth.request("POST", "/sessions/batch/{referenceNumber}/close",
                                    params={"referenceNumber": reference_number}, replay_safe=True, expect=(204,))
        except KsefException as exc:
            if SESSION_CLOSED_OR_FORBIDDEN not in exc.codes:
                raise
            log.info("ksef.batch_already_closed", session=reference_number)
        log.info("ksef.batch_closed", context=self.auth.context.key, session=reference_number)

    async def wait(self, reference_number: str) -> SessionStatus:
        """Poll GET /sessions/{ref} until processing ends (100/150 -> 200 or 4xx, §4.4)."""
        def still_processing(status: SessionStatus, waited: float) -> BatchTimeout:
            return BatchTimeout(f"batch session {reference_number} is still processing (status "
                                f"{status.status.code}) after {waited:.0f} s; poll it again later")

        options = self.options
        status = await poll(lambda: self.sessions.status(reference_number),
                            lambda s: s.status.code not in IN_PROGRESS, sleep=self.sleep, first=options.poll_first,
                            factor=options.poll_factor, maximum=options.poll_max, budget=options.wait_budget,
                            gave_up=still_processing)
        log.info("ksef.batch_processed", session=reference_number, code=status.status.code,
                 ok=status.successful_invoice_count, failed=status.failed_invoice_count)
        return status

    async def outcome(self, reference_number: str, entries: Iterable[ManifestEntry],
                      status: SessionStatus | None = None) -> BatchOutcome:
        """Every invoice's result, matched to the manifest (works after a restart: reference + manifest)."""
        status = status or await self.sessions.status(reference_number)
        listed = await self.sessions.invoices(reference_number, page_size=self.options.invoice_page_size)
        results, unmatched = match_results(entries, listed)
        return BatchOutcome(reference_number, status, results, unmatched)

    async def session_upo(self, reference_number: str, status: SessionStatus | None = None
                          ) -> list[tuple[str, bytes]]:
        """The collective UPO pages (status 200 only; each page lists up to 10 000 invoices, §4.4)."""
        return await self.sessions.session_upo(reference_number, status)


def _opened(body: Any, public_key_id: str, parts: list[EncryptedPart]) -> OpenedBatch:
    try:
        uploads = [PartUpload(int(item["ordinalNumber"]), str(item["method"]), str(item["url"]),
                              {str(k): str(v) for k, v in (item.get("headers") or {}).items() if v is not None})
                   for item in body["partUploadRequests"]]
        reference = str(body["referenceNumber"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"POST /sessions/batch answered without usable partUploadRequests: {exc!r}") from exc
    if sorted(u.ordinal_number for u in uploads) != sorted(p.ordinal_number for p in parts):
        raise ProtocolError(f"batch session {reference}: KSeF gave upload URLs for parts "
                            f"{sorted(u.ordinal_number for u in uploads)}, we declared {len(parts)}")
    return OpenedBatch(reference, uploads, public_key_id)


def match_results(entries: Iterable[ManifestEntry], listed: Iterable[SessionInvoice]
                  ) -> tuple[list[BatchInvoiceResult], list[SessionInvoice]]:
    """Pair KSeF's invoices with ours: by invoiceFileName first, then by invoiceHash (identical bytes under
    two names are paired in order). Returns the results and KSeF's invoices that matched nothing."""
    pool = list(listed)
    by_name: dict[str, int] = {}
    by_hash: dict[str, list[int]] = {}
    for position, invoice in enumerate(pool):
        if invoice.invoice_file_name:
            by_name.setdefault(invoice.invoice_file_name, position)
        by_hash.setdefault(invoice.invoice_hash, []).append(position)
    used: set[int] = set()
    results: list[BatchInvoiceResult] = []
    for entry in entries:
        index: int | None = by_name.get(entry.file_name)
        if index is None or index in used:
            index = next((i for i in by_hash.get(entry.invoice_hash, []) if i not in used), None)
        if index is not None:
            used.add(index)
        results.append(BatchInvoiceResult(entry, None if index is None else pool[index]))
    return results, [invoice for i, invoice in enumerate(pool) if i not in used]
