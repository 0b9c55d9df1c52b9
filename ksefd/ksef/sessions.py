"""Reading sessions, online or batch (PROTOCOL.md §4.4-4.6): status, invoice lists with continuation,
one invoice's status, and UPOs per invoice and per session, each checked against `x-ms-meta-hash`.

"Not found" is HTTP 400 with a code (21173 session, 21178 UPO), never 404 (§13.4): those surface as
KsefException.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from .auth import AuthSession
from .crypto import sha256_b64
from .errors import ProtocolError
from .models import SessionInvoice, SessionInvoicesPage, SessionStatus
from .transport import Response

log = structlog.get_logger("ksefd.ksef.sessions")


def check_hash(response: Response, what: str) -> bytes:
    """The body, if it matches the Base64 SHA-256 in `x-ms-meta-hash` (when KSeF sent one)."""
    expected = response.headers.get("x-ms-meta-hash") or response.headers.get("X-Ms-Meta-Hash")
    if expected and expected.strip() != sha256_b64(response.body):
        error = ProtocolError(f"{what}: the body does not match its x-ms-meta-hash (truncated or damaged download)")
        error.retryable = True
        raise error
    return response.body


class SessionQueries:
    def __init__(self, auth: AuthSession) -> None:
        self.auth = auth

    async def status(self, session_reference: str) -> SessionStatus:
        response = await self.auth.request("GET", "/sessions/{referenceNumber}",
                                           params={"referenceNumber": session_reference}, expect=(200,))
        return response.decode(SessionStatus)

    async def invoice_pages(self, session_reference: str, *, page_size: int = 100, failed_only: bool = False
                            ) -> AsyncIterator[SessionInvoicesPage]:
        """Pages of the session's invoices, following `continuationToken` in the x-continuation-token header."""
        template = "/sessions/{referenceNumber}/invoices" + ("/failed" if failed_only else "")
        continuation: str | None = None
        while True:
            headers = {"x-continuation-token": continuation} if continuation else None
            response = await self.auth.request("GET", template, params={"referenceNumber": session_reference},
                                               query={"pageSize": str(page_size)}, headers=headers, expect=(200,))
            page = response.decode(SessionInvoicesPage)
            yield page
            if not page.continuation_token:
                return
            continuation = page.continuation_token

    async def invoices(self, session_reference: str, *, page_size: int = 100, failed_only: bool = False
                       ) -> list[SessionInvoice]:
        found: list[SessionInvoice] = []
        async for page in self.invoice_pages(session_reference, page_size=page_size, failed_only=failed_only):
            found.extend(page.invoices)
        return found

    async def invoice(self, session_reference: str, invoice_reference: str) -> SessionInvoice:
        response = await self.auth.request(
            "GET", "/sessions/{referenceNumber}/invoices/{invoiceReferenceNumber}",
            params={"referenceNumber": session_reference, "invoiceReferenceNumber": invoice_reference}, expect=(200,))
        return response.decode(SessionInvoice)

    async def _upo(self, template: str, params: dict[str, str], what: str) -> bytes:
        for attempt in (1, 2):
            response = await self.auth.request("GET", template, params=params, expect=(200,))
            try:
                return check_hash(response, what)
            except ProtocolError:
                if attempt == 2:
                    raise
                log.warning("ksef.upo_hash_mismatch", what=what)
        raise AssertionError("unreachable")

    async def invoice_upo(self, session_reference: str, invoice_reference: str) -> bytes:
        """The invoice's UPO XML by its invoice reference number."""
        return await self._upo("/sessions/{referenceNumber}/invoices/{invoiceReferenceNumber}/upo",
                               {"referenceNumber": session_reference, "invoiceReferenceNumber": invoice_reference},
                               f"UPO of invoice {invoice_reference}")

    async def invoice_upo_by_ksef_number(self, session_reference: str, ksef_number: str) -> bytes:
        return await self._upo("/sessions/{referenceNumber}/invoices/ksef/{ksefNumber}/upo",
                               {"referenceNumber": session_reference, "ksefNumber": ksef_number},
                               f"UPO of invoice {ksef_number}")

    async def session_upo_page(self, session_reference: str, upo_reference: str) -> bytes:
        return await self._upo("/sessions/{referenceNumber}/upo/{upoReferenceNumber}",
                               {"referenceNumber": session_reference, "upoReferenceNumber": upo_reference},
                               f"session UPO page {upo_reference}")

    async def session_upo(self, session_reference: str, status: SessionStatus | None = None
                          ) -> list[tuple[str, bytes]]:
        """Every page of the collective session UPO as (UPO reference number, XML); empty until the session
        status is 200 (the UPO is generated after close, PROTOCOL.md §4.3/4.4)."""
        status = status or await self.status(session_reference)
        if status.upo is None:
            return []
        return [(page.reference_number, await self.session_upo_page(session_reference, page.reference_number))
                for page in status.upo.pages]

    async def download_presigned_upo(self, url: str) -> bytes:
        """A UPO from a pre-signed `upoDownloadUrl` / `downloadUrl`: no token, not rate limited."""
        response = await self.auth.transport.presigned("GET", url, expect=(200,))
        return check_hash(response, "UPO download")
