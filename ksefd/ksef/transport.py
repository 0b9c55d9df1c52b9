"""HTTP transport for the KSeF client: one aiohttp session, JSON helpers, error mapping, safe retries,
and the rate-limiter hook.

Use it like this (the other ksefd.ksef modules do)::

    transport = Transport(environment.api_url, gate=limiter)           # gate: optional RequestGate
    response = await transport.request("GET", "/sessions/{ref}", params={"ref": ref},
                                       bearer=access_token, context="Nip:5265877635")
    status = response.decode(SessionStatus)                            # msgspec struct, or .json()
    part = await transport.presigned("PUT", url, body=data, headers=upload_headers)  # no Bearer, no gate
    await transport.close()

`template` is the path as openapi.json writes it (placeholders in braces); `params` fill the placeholders
(URL-quoted). The template, not the filled path, picks the KSeF rate-limit group (`rate_limit_group`), so
the limiter sees "invoiceSend" rather than a reference number.

Retries (DESIGN.md convention 4, issue #4 item 8):

* Every error answer becomes a typed exception from `errors.py` (responses.error_from_response: 400
  ExceptionResponse or problem+json -> KsefException, 401 Unauthorized, 403 Forbidden, 410 Gone, 429
  RateLimited, 5xx ServerError even for HTML or empty bodies, anything else ApiError).
* A request marked `replay_safe` (default: GET and DELETE) is retried inside the call on connection failures,
  timeouts and 5xx, with capped exponential backoff, at most `RetryPolicy.attempts` times.
* A 429 means KSeF refused the request without processing it, so any request is retried after Retry-After,
  as long as the wait is at most `RetryPolicy.max_retry_after`; otherwise RateLimited is raised.
* A request that is not replay-safe (an invoice send) is never re-sent after it may have reached KSeF:
  a reset, timeout or 5xx raises OutcomeUnknown. A connection that could not be opened at all is retried
  (nothing was sent). Such requests keep their own pool of keep-alive connections (issue #16: a fresh TCP
  connection per invoice cost a handshake each, a TLS one on KSeF), reused only while idle for less than
  `SEND_KEEPALIVE_SECONDS`, well inside the idle timeout of common servers (Apache's 5 s is the shortest),
  so a connection the server had already closed is rarely met. When it is, the send ends OutcomeUnknown
  and the daemon resolves it from the session's invoice list by hash (never re-sent blindly; aiohttp retries
  a stale connection only for idempotent methods, never for POST).

Rate limiting: if a `RequestGate` is given, `acquire(context, group)` runs before every attempt and
`penalise(context, group, retry_after)` after every 429; the gate is then responsible for the wait (its
next `acquire` for that context and group must not return before the penalty ends), and `ready` is asked
right before the bytes go out, so no request leaves into a block that began meanwhile. Without a gate the
transport sleeps Retry-After itself. `context` is the context identifier ("Nip:5265877635") of the access
token used, or "" for unauthenticated calls (group "anonymous", counted per IP by KSeF).

Observers: `transport.observers` (empty by default) are called after every attempt with an `Exchange`: the
context, rate-limit group, path template, status (None when no answer came) and seconds. The daemon's /metrics
counts KSeF latency and 429s there; an observer sees nothing secret and its failure never fails the request.

Logging: method, path template, status, attempt and elapsed time only; never headers, bodies, query strings
of pre-signed URLs, or tokens.
"""

from __future__ import annotations

import functools
import io
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
import structlog
from multidict import CIMultiDict

from ksefd.i18n import N_

from .clock import Sleep, real_sleep
from .errors import OutcomeUnknown, RateLimited, ServerError, TransportError, UnreadableRequest
from .ratelimit_journal import Grant
from .responses import Response as Response
from .responses import error_from_response
from .texts import said

log = structlog.get_logger("ksefd.ksef")
USER_AGENT = "ksefd/0.1"
_STREAM_ABOVE = 512 * 1024
SEND_KEEPALIVE_SECONDS = 3.0    # idle keep-alive connections for sends are closed after this (see above)
_STREAM_CHUNK = 256 * 1024     # `presigned(into=...)` writes the body in pieces of this size


@dataclass(frozen=True)
class Exchange:
    """One HTTP attempt as an observer sees it (no URL, header or body: nothing secret)."""

    context: str            # "Nip:5265877635", or "" for unauthenticated and pre-signed calls
    group: str              # the KSeF rate-limit group, "" for pre-signed storage URLs
    template: str           # "/sessions/online/{referenceNumber}/invoices"
    status: int | None      # None: no answer (connection failed, reset, timeout)
    seconds: float


RequestObserver = Callable[[Exchange], None]

# An async source of the access token, read after the rate limiter let the request pass (auth.AuthSession).
BearerSource = Callable[[], Awaitable[str]]


class RequestGate(Protocol):
    """Client-side rate limiter hook (implemented in ratelimit.py). Called once per HTTP attempt."""

    async def acquire(self, context: str, group: str) -> Grant | None:
        """Wait until one more request of `group` in `context` fits every window (and any 429 penalty)."""
        ...

    def ready(self, context: str, group: str) -> bool:
        """Asked right before sending: False if a 429 block began since `acquire` returned."""
        ...

    def answered(self, grant: Grant) -> None:
        """The request `acquire` let through has its answer (or failed, or was not sent after all)."""
        ...

    async def penalise(self, context: str, group: str, retry_after: float) -> None:
        """KSeF answered 429 with Retry-After: block `group` in `context` for `retry_after` seconds."""
        ...


# KSeF rate-limit groups (PROTOCOL.md §7 and §14.3/§14.5), keyed by (method, template with "{}" placeholders).
_GROUPS: dict[tuple[str, str], str] = {
    ("POST", "/sessions/online"): "onlineSession",
    ("POST", "/sessions/online/{}/close"): "onlineSessionClose",
    ("POST", "/sessions/online/{}/invoices"): "invoiceSend",
    ("POST", "/sessions/batch"): "batchSession",
    ("POST", "/sessions/batch/{}/close"): "batchSessionClose",
    ("GET", "/sessions"): "sessionList",
    ("GET", "/sessions/{}/invoices"): "sessionInvoiceList",
    ("GET", "/sessions/{}/invoices/failed"): "sessionInvoiceList",
    ("GET", "/sessions/{}/invoices/{}"): "invoiceStatus",
    ("POST", "/invoices/query/metadata"): "invoiceMetadata",
    ("POST", "/invoices/exports"): "invoiceExport",
    ("GET", "/invoices/exports/{}"): "invoiceExportStatus",
    ("GET", "/invoices/ksef/{}"): "invoiceDownload",
    # Public operations: 60 req/s per IP only (OA x-rate-limits; `anonymous` in GET /rate-limits, §14.5).
    ("POST", "/auth/challenge"): "anonymous",
    ("POST", "/auth/ksef-token"): "anonymous",
    ("POST", "/auth/xades-signature"): "anonymous",
    ("GET", "/auth/{}"): "anonymous",
    ("POST", "/auth/token/redeem"): "anonymous",
    ("POST", "/auth/token/refresh"): "anonymous",
    ("GET", "/security/public-key-certificates"): "anonymous",
    ("GET", "/peppol/query"): "anonymous",
}
_ANONYMOUS_PREFIXES = ("/testdata/subject", "/testdata/person", "/testdata/permissions", "/testdata/attachment")
_PLACEHOLDER = re.compile(r"\{[^/{}]*\}")
_QUERY = re.compile(r"\?[^\s'\"]*")


def _scrubbed(exc: BaseException) -> str:
    """An aiohttp error as text without query strings: a pre-signed URL's `sig=` grants access (§1)."""
    return _QUERY.sub("?…", str(exc))


@functools.lru_cache(maxsize=256)      # a pure function of a few dozen templates, asked once per request
def rate_limit_group(method: str, template: str) -> str:
    """The KSeF rate-limit group of an operation, e.g. ("POST", "/sessions/online/{ref}/invoices") -> "invoiceSend".

    Groups: onlineSession, onlineSessionClose, invoiceSend, batchSession, batchSessionClose, invoiceStatus,
    sessionList, sessionInvoiceList, sessionMisc, invoiceMetadata, invoiceExport, invoiceExportStatus,
    invoiceDownload, collectiveIdentifier, anonymous, other.
    """
    method = method.upper()
    path = _PLACEHOLDER.sub("{}", template.split("?", 1)[0]).rstrip("/") or "/"
    found = _GROUPS.get((method, path))
    if found:
        return found
    if method == "GET" and path.startswith("/sessions/"):
        return "sessionMisc"        # session status and the three UPO endpoints
    if path.startswith("/collective-identifiers"):
        return "collectiveIdentifier"
    if method == "POST" and path.startswith(_ANONYMOUS_PREFIXES):
        return "anonymous"
    return "other"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4               # tries in total for one call
    base_delay: float = 0.5         # first backoff; doubles each time, with jitter
    max_delay: float = 8.0
    max_retry_after: float = 120.0  # a longer 429 wait is raised as RateLimited for the caller to schedule

    def backoff(self, attempt: int) -> float:
        delay: float = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return delay * (0.5 + random.random() / 2)


NO_RETRY = RetryPolicy(attempts=1)


class Transport:
    def __init__(self, base_url: str, *, gate: RequestGate | None = None, retry: RetryPolicy | None = None,
                 timeout: float = 60.0, sleep: Sleep = real_sleep, headers: Mapping[str, str] | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.gate = gate
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.sleep = sleep
        self.extra_headers = dict(headers or {})
        self._session = session
        self._owns_session = session is None
        self._fresh: aiohttp.ClientSession | None = None
        self.observers: list[RequestObserver] = []

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        if self._fresh is not None:
            await self._fresh.close()
        self._session = self._fresh = None

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _pooled(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    def _sending(self) -> aiohttp.ClientSession:
        """The pool for requests that are not replay-safe (module docstring: short keep-alive)."""
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=SEND_KEEPALIVE_SECONDS),
                headers={"User-Agent": USER_AGENT})
        return self._fresh

    def url(self, template: str, params: Mapping[str, str] | None = None) -> str:
        path = template
        for name, value in (params or {}).items():
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        if _PLACEHOLDER.search(path):
            raise ValueError(f"unfilled placeholder in {template!r}")
        return self.base_url + path

    async def request(self, method: str, template: str, *, params: Mapping[str, str] | None = None,
                      query: Mapping[str, str] | list[tuple[str, str]] | None = None, json: Any = None,
                      body: bytes | None = None, content_type: str | None = None,
                      bearer: str | BearerSource | None = None,
                      context: str = "", headers: Mapping[str, str] | None = None,
                      replay_safe: bool | None = None, expect: Collection[int] = (200, 201, 202, 204),
                      retry: RetryPolicy | None = None, time_limit: float | None = None) -> Response:
        """Send one KSeF API call (see the module docstring); raises a KsefError subclass on failure."""
        method = method.upper()
        group = rate_limit_group(method, template)
        url = self.url(template, params)
        send_headers = {**self.extra_headers, **(headers or {})}
        if isinstance(bearer, str) and bearer:
            send_headers["Authorization"] = f"Bearer {bearer}"
        data = body
        if json is not None:
            data = msgspec.json.encode(json)
            content_type = "application/json"
        if content_type:
            send_headers["Content-Type"] = content_type
        safe = method in ("GET", "DELETE", "HEAD") if replay_safe is None else replay_safe
        return await self._with_retries(_Call(method, url, template, group, context, send_headers, data, query,
                                              safe, frozenset(expect), time_limit or self.timeout,
                                              None if isinstance(bearer, str) else bearer),
                                        retry or self.retry)

    async def presigned(self, method: str, url: str, *, body: bytes | None = None,
                        headers: Mapping[str, str] | None = None, expect: Collection[int] = (200, 201),
                        retry: RetryPolicy | None = None, time_limit: float = 600.0,
                        into: BinaryIO | None = None) -> Response:
        """A call to a pre-signed storage URL (UPO, batch part upload, export part): never a Bearer header,
        not rate limited (PROTOCOL.md §1, §7), replay-safe (the same bytes to the same URL).

        `into`: an expected answer's body is streamed into this file (rewound and truncated for each attempt)
        instead of memory, and the returned Response has an empty body (an export part may be 50 MB)."""
        host = urlsplit(url).netloc
        call = _Call(method.upper(), url, f"presigned:{host}", "", "", dict(headers or {}), body, None, True,
                     frozenset(expect), time_limit, into=into)
        return await self._with_retries(call, retry or self.retry)

    async def _with_retries(self, call: _Call, policy: RetryPolicy) -> Response:
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= policy.attempts
            sent, grant = await self._admitted(call)
            try:
                response = await self._send_counted(sent, grant, attempt)
            except _NotSent as exc:
                if last:
                    raise exc.error from exc.__cause__
                await self.sleep(policy.backoff(attempt))
                continue
            except _MaybeSent as exc:
                if not call.replay_safe:
                    raise OutcomeUnknown(said(N_("{method} {path}: {reason}; KSeF may or may not have processed it"),
                                              method=call.method, path=call.template, reason=exc.reason),
                                         method=call.method, url=call.template) from exc.__cause__
                if last:
                    raise TransportError(said(N_("{method} {path} failed: {reason}"), method=call.method,
                                              path=call.template, reason=exc.reason),
                                         method=call.method, url=call.template) from exc.__cause__
                await self.sleep(policy.backoff(attempt))
                continue
            if response.status in call.expect:
                return response
            error = error_from_response(response, call.method, call.template, call.group, call.context)
            if isinstance(error, RateLimited):
                if self.gate is not None and call.group:
                    await self.gate.penalise(call.context, call.group, error.retry_after)
                if last or error.retry_after > policy.max_retry_after:
                    raise error
                log.info("ksef.rate_limited", path=call.template, group=call.group, retry_after=error.retry_after)
                if self.gate is None or not call.group:
                    await self.sleep(error.retry_after)
                continue
            if isinstance(error, UnreadableRequest):
                # Loud: the body we built could not be read (a bug of ours or damage on the way); no retry.
                log.error("ksef.unreadable_request", method=call.method, path=call.template, group=call.group,
                          details=error.details[:3])
            if isinstance(error, ServerError):
                if not call.replay_safe:
                    raise OutcomeUnknown(f"{error.message}; KSeF may or may not have processed it",
                                         method=call.method, url=call.template) from error
                if not last:
                    await self.sleep(policy.backoff(attempt))
                    continue
            raise error

    async def _admitted(self, call: _Call) -> tuple[_Call, Grant | None]:
        """Through the gate, with the access token; never into a 429 block that began meanwhile (issue #10)."""
        while True:
            grant = await self.gate.acquire(call.context, call.group) if self.gate is not None and call.group else None
            try:
                sent = call
                if call.bearer_source is not None:
                    # Fetched after the limiter's wait, which can last an hour: the token is fresh when sent.
                    token = await call.bearer_source()
                    sent = call.with_headers({**call.headers, "Authorization": f"Bearer {token}"})
            except BaseException:
                self._answered(grant)
                raise
            # No await between this check and the send: a 429 seen by a sibling while the token was fetched
            # sends this request back to the gate, which waits out the block (a request into it lengthens it).
            if self.gate is None or not call.group or self.gate.ready(call.context, call.group):
                return sent, grant
            self._answered(grant)

    async def _send_counted(self, call: _Call, grant: Grant | None, attempt: int) -> Response:
        try:
            return await self._send_once(call, attempt)
        finally:
            self._answered(grant)   # KSeF counted it by now at the latest (the limiter's window stamp)

    def _answered(self, grant: Grant | None) -> None:
        if self.gate is not None and grant is not None:
            self.gate.answered(grant)

    async def _send_once(self, call: _Call, attempt: int) -> Response:
        session = self._pooled() if call.replay_safe else self._sending()
        started = time.monotonic()
        # aiohttp warns that big raw bytes bodies block the loop; a fresh BytesIO per attempt streams them.
        data: bytes | io.BytesIO | None = call.body
        if call.body is not None and len(call.body) > _STREAM_ABOVE:
            data = io.BytesIO(call.body)
        try:
            async with session.request(call.method, call.url, data=data, headers=call.headers,
                                       params=call.query, allow_redirects=False,
                                       timeout=_timeout(call.timeout)) as resp:
                if call.into is not None and resp.status in call.expect:
                    body = await _stream_into(resp, call.into)
                else:
                    body = await resp.read()
                result = Response(resp.status, CIMultiDict(resp.headers), body, resp.content_type)
        except aiohttp.ClientConnectorError as exc:
            self._observe(call, None, started)
            log.warning("ksef.connect_failed", path=call.template, attempt=attempt, error=type(exc).__name__)
            raise _NotSent(TransportError(said(N_("cannot connect for {method} {path}: {reason}"), method=call.method,
                                               path=call.template, reason=_scrubbed(exc)),
                                          method=call.method, url=call.template)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._observe(call, None, started)
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {_scrubbed(exc)}"
            log.warning("ksef.request_failed", path=call.template, attempt=attempt, reason=reason)
            raise _MaybeSent(reason) from exc
        self._observe(call, result.status, started)
        log.debug("ksef.response", method=call.method, path=call.template, status=result.status, attempt=attempt,
                  ms=round((time.monotonic() - started) * 1000, 1))
        return result

    def _observe(self, call: _Call, status: int | None, started: float) -> None:
        if not self.observers:
            return
        exchange = Exchange(call.context, call.group, call.template, status, time.monotonic() - started)
        for observer in self.observers:
            try:
                observer(exchange)
            except Exception as exc:    # counting must never fail a KSeF call
                log.warning("ksef.observer_failed", error=repr(exc))


@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    template: str
    group: str
    context: str
    headers: dict[str, str]
    body: bytes | None
    query: Mapping[str, str] | list[tuple[str, str]] | None
    replay_safe: bool
    expect: frozenset[int]
    timeout: float
    bearer_source: BearerSource | None = None
    into: BinaryIO | None = None

    def with_headers(self, headers: dict[str, str]) -> _Call:
        """This call with other headers (per request: a quarter of `dataclasses.replace`'s cost)."""
        return _Call(self.method, self.url, self.template, self.group, self.context, headers, self.body, self.query,
                     self.replay_safe, self.expect, self.timeout, self.bearer_source, self.into)


@functools.lru_cache(maxsize=32)
def _timeout(total: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for a call's time limit (immutable, so shared instead of built per request)."""
    return aiohttp.ClientTimeout(total=total, connect=15)


async def _stream_into(resp: aiohttp.ClientResponse, sink: BinaryIO) -> bytes:
    """The body into `sink` from its start, chunk by chunk (page-cache writes: short enough for the loop)."""
    sink.seek(0)
    sink.truncate()
    async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
        sink.write(chunk)
    sink.flush()
    return b""


class _NotSent(Exception):
    def __init__(self, error: TransportError) -> None:
        super().__init__(error.message)
        self.error = error


class _MaybeSent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
