"""One typed hierarchy for everything that can go wrong talking to KSeF (issue #4 item 8).

    KsefError                      base; `retryable` says whether trying again later can help
    ├── CredentialsError           bad token text, unreadable certificate or key, wrong password (before any request)
    ├── TransportError             connection reset/refused, timeout, 5xx incl. HTML or empty bodies (retryable)
    │   ├── ServerError            an HTTP 5xx answer (status, excerpt of the body)
    │   └── OutcomeUnknown         a non-replayable request (invoice send) may or may not have been processed
    ├── RateLimited                429; `retry_after` seconds (PROTOCOL.md §7)
    ├── ApiError                   any other HTTP error answer (status, detail)
    │   ├── KsefException          400 with exception codes (PROTOCOL.md §10.1/10.2)
    │   │   └── UnreadableRequest  21001: KSeF could not read our body; permanent, never retried (§15)
    │   ├── Unauthorized           401 problem+json
    │   ├── Forbidden              403 problem+json (`reasonCode`, `security`; `timestamp` optional, §14.2)
    │   └── Gone                   410 (expired async status)
    ├── ProtocolError              a 2xx answer we cannot read (not JSON, wrong shape, bad UPO hash)
    ├── AuthenticationFailed       the auth operation ended with status >= 400 (PROTOCOL.md §3.4)
    ├── AuthenticationPending      still status 100 when polling gave up (retryable)
    └── InvoiceSendError           reserved for the online/batch layers' invoice-level failures

Messages are written for a person: they name the failing thing and, where possible, the fix.
No message ever contains a token, key, password or access token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ksefd.i18n import N_

from .texts import Words, english, said

# 400 exception codes after which the same request may succeed later or after a client-side fix that the
# client library applies itself (re-fetch keys, open another session): PROTOCOL.md §6.2, §6.3, §2.1, §14.3.
RETRYABLE_CODES = frozenset({21165, 21182, 21184, 21470})
# API 2.9.0 (PROTOCOL.md §15): "Nieczytelna treść." KSeF could not read the request body (not JSON, not UTF-8).
UNREADABLE_BODY = 21001

# Human hints for the codes a daemon meets most (PROTOCOL.md §10.2); message ids, shown in the reader's language.
CODE_HINTS: dict[int, str] = {
    21001: N_("KSeF could not read the request body (not valid JSON or XML, or not UTF-8): a ksefd bug or a body "
           "damaged on the way (a proxy?); it is not retried - report it with the log"),
    9105: N_("the XAdES signature does not verify; check that the key belongs to the certificate"),
    21115: N_("KSeF rejected the certificate (expired, wrong type, or not accepted in this environment)"),
    21117: N_("the certificate's identifier does not fit the context type"),
    21401: N_("the signed AuthTokenRequest does not match its XSD"),
    21111: N_("the auth challenge was wrong, used or older than 10 minutes; start a new authentication"),
    21155: N_("the session reached its invoice limit; open a new session"),
    21165: N_("the invoice is processed but not yet available; try again later"),
    21173: N_("no session with that reference number in this context"),
    21178: N_("the UPO is not available (yet); try again later"),
    21180: N_("the session is closed or expired; open a new session"),
    21182: N_("too many exports are running in this context; wait for one to finish"),
    21184: N_("the session is temporarily unavailable; open a new session and send the invoice there"),
    21301: N_("the tokens were already redeemed, or the KSeF token was revoked; authenticate again"),
    21402: N_("invoiceSize or encryptedInvoiceSize does not match the content"),
    21403: N_("invoiceHash or encryptedInvoiceHash does not match the content"),
    21405: N_("the request failed KSeF's input validation (see details)"),
    21418: N_("the continuation token is malformed; restart the listing"),
    21470: N_("the public key id is unknown or withdrawn; re-fetch /security/public-key-certificates"),
}


class KsefError(Exception):
    """Base of every error raised by ksefd.ksef. Made from words (texts.py), it keeps them in `words` for the
    reader's language; `str()` and `message` are English either way (logs)."""

    retryable: bool = False
    words: Words = ()

    def __init__(self, message: str | Words) -> None:
        if not isinstance(message, str):
            self.words = message
            message = english(message)
        super().__init__(message)
        self.message = message


class CredentialsError(KsefError, ValueError):
    """The credentials cannot be used (bad token text, unreadable file, wrong password). Nothing was sent."""


class TransportError(KsefError):
    """The request did not get a usable answer: connection failure, timeout, 5xx. Retrying later can help."""

    retryable = True

    def __init__(self, message: str | Words, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class ServerError(TransportError):
    """HTTP 5xx; `excerpt` is the start of the body as text (an HTML page from a proxy, or empty)."""

    def __init__(self, status: int, excerpt: str, *, method: str = "", url: str = "") -> None:
        shown: str | Words = excerpt or said(N_("empty body"))
        super().__init__(said(N_("KSeF answered {method} {url} with HTTP {status} ({excerpt})"), method=method,
                              url=url, status=str(status), excerpt=shown), method=method, url=url)
        self.status = status
        self.excerpt = excerpt


class OutcomeUnknown(TransportError):
    """A request that must not be replayed blindly (an invoice send) failed after it may have reached KSeF.

    The invoice may or may not be in KSeF. Resolve it by status (session invoice list, matching
    `invoice_hash`) or by sending again and treating a 440 duplicate of the same hash as success
    (DESIGN.md "in_doubt").
    """

    def __init__(self, message: str | Words, *, method: str = "", url: str = "", session_reference: str | None = None,
                 invoice_hash: str | None = None) -> None:
        super().__init__(message, method=method, url=url)
        self.session_reference = session_reference
        self.invoice_hash = invoice_hash


class RateLimited(KsefError):
    """HTTP 429: honour `retry_after` seconds before calling the same group again (PROTOCOL.md §7)."""

    retryable = True

    def __init__(self, retry_after: float, *, group: str = "", context: str = "", details: list[str] | None = None
                 ) -> None:
        words = said(N_("KSeF rate limit reached; retry after {seconds} s"), seconds=f"{retry_after:g}")
        if group:
            words = (said(N_("KSeF rate limit reached for {group} in context {context}; retry after {seconds} s"),
                          group=group, context=context, seconds=f"{retry_after:g}") if context else
                     said(N_("KSeF rate limit reached for {group}; retry after {seconds} s"), group=group,
                          seconds=f"{retry_after:g}"))
        if details:
            words = said(N_("{reason} ({details})"), reason=words, details="; ".join(details))
        super().__init__(words)
        self.retry_after = retry_after
        self.group = group
        self.context = context
        self.details = list(details or [])


class ApiError(KsefError):
    """An HTTP error answer other than 400/401/403/410/429/5xx (e.g. 404 from a wrong base URL)."""

    def __init__(self, status: int, detail: str | Words, *, method: str = "", url: str = "") -> None:
        super().__init__(said(N_("KSeF answered {method} {url} with HTTP {status}: {detail}"), method=method,
                              url=url, status=str(status), detail=detail))
        self.status = status
        self.detail = detail if isinstance(detail, str) else english(detail)
        self.method = method
        self.url = url


@dataclass(frozen=True)
class ExceptionDetail:
    code: int
    description: str
    details: list[str] = field(default_factory=list)

    def text(self) -> str:
        return english(self.words())

    def words(self) -> Words:
        """KSeF's own code, description and details as they came; ksefd's hint in the reader's language."""
        extra = f" [{'; '.join(self.details)}]" if self.details else ""
        said_by_ksef = f"{self.code} {self.description}{extra}"
        hint = CODE_HINTS.get(self.code)
        if hint is None:
            return said(N_("{ksef}"), ksef=said_by_ksef)
        return said(N_("{ksef} ({hint})"), ksef=said_by_ksef, hint=said(hint))


class KsefException(ApiError):
    """HTTP 400 with one or more KSeF exception codes (ExceptionResponse or problem+json `errors`)."""

    def __init__(self, errors: list[ExceptionDetail], *, method: str = "", url: str = "") -> None:
        if not errors:
            errors = [ExceptionDetail(0, "Bad Request without exception details")]
        detail: Words = errors[0].words()
        for more in errors[1:]:
            detail = said(N_("{first}; {then}"), first=detail, then=more.words())
        super().__init__(400, detail, method=method, url=url)
        self.errors = errors
        self.retryable = any(e.code in RETRYABLE_CODES for e in errors)

    @property
    def code(self) -> int:
        return self.errors[0].code

    @property
    def codes(self) -> list[int]:
        return [e.code for e in self.errors]

    @property
    def description(self) -> str:
        return self.errors[0].description

    @property
    def details(self) -> list[str]:
        return [d for e in self.errors for d in e.details]


class UnreadableRequest(KsefException):
    """400 with 21001 (PROTOCOL.md §15): KSeF could not read the body we sent. The same bytes would fail again,
    so this is a permanent request error, never retried as if transient, whatever other codes come with it."""

    def __init__(self, errors: list[ExceptionDetail], *, method: str = "", url: str = "") -> None:
        super().__init__(errors, method=method, url=url)
        self.retryable = False


class Unauthorized(ApiError):
    """HTTP 401: the access token is missing, expired or no longer accepted; authenticate again."""


class Forbidden(ApiError):
    """HTTP 403 with `reasonCode` and the `security` payload (PROTOCOL.md §10.1)."""

    def __init__(self, detail: str, reason_code: str, security: dict[str, Any] | None, *, method: str = "",
                 url: str = "") -> None:
        self.reason_code = reason_code
        self.security = dict(security or {})
        super().__init__(403, _forbidden_text(detail, reason_code, self.security), method=method, url=url)

    @property
    def required_permissions(self) -> list[str]:
        return [str(p) for p in self.security.get("requiredAnyOfPermissions") or []]

    @property
    def present_permissions(self) -> list[str]:
        return [str(p) for p in self.security.get("presentPermissions") or []]


def _forbidden_text(detail: str, reason: str, security: dict[str, Any]) -> Words:
    if reason == "missing-permissions":
        required = ", ".join(security.get("requiredAnyOfPermissions") or []) or "(not stated)"
        present = ", ".join(security.get("presentPermissions") or []) or "none"
        return said(N_("missing permissions: the operation needs one of {required}; the credentials hold {present}. "
                       "Grant the permission in this context (or create a KSeF token that has it). KSeF: {detail}"),
                    required=required, present=present, detail=detail)
    if reason == "ip-not-allowed":
        return said(N_("the authorisation policy does not allow calls from IP {ip}; KSeF: {detail}"),
                    ip=str(security.get("clientIp", "?")), detail=detail)
    if reason == "auth-method-not-allowed":
        return said(N_("this operation is not allowed for authentication method {method} (e.g. it needs a XAdES "
                       "login); KSeF: {detail}"), method=str(security.get("authenticationMethodCategory", "?")),
                    detail=detail)
    if reason == "context-type-not-allowed":
        return said(N_("not allowed in a {type} context; KSeF: {detail}"),
                    type=str(security.get("contextIdentifierType", "?")), detail=detail)
    if reason == "security-service-blocked":
        return said(N_("blocked by KSeF's security service (incident {incident}, IP {ip}); KSeF: {detail}"),
                    incident=str(security.get("incidentId", "?")), ip=str(security.get("clientIp", "?")),
                    detail=detail)
    return said(N_("{reason}: {detail}"), reason=reason or "forbidden", detail=detail)


class Gone(ApiError):
    """HTTP 410: the async status expired (auth and exports after 7 days, PROTOCOL.md §10.1)."""


class ProtocolError(KsefError):
    """KSeF answered with something we cannot read (wrong content type, shape, or a hash mismatch)."""


class AuthenticationFailed(KsefError):
    """The authentication operation ended with status.code >= 400 (PROTOCOL.md §3.4). `message` says what to do."""

    def __init__(self, message: str | Words, *, code: int, description: str, details: list[str], context: str,
                 reference_number: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.description = description
        self.details = list(details)
        self.context = context
        self.reference_number = reference_number
        self.retryable = code in (500, 550)     # "unknown" and "cancelled by the system; retry"


class AuthenticationPending(KsefError):
    """The authentication operation was still in progress (status 100) when polling gave up; retry later.
    Normal for qualified certificates on DEMO/PROD while OCSP/CRL answers (PROTOCOL.md §3.3)."""

    retryable = True


class InvoiceSendError(KsefError):
    """Reserved for invoice-level failures that the session layers raise."""
