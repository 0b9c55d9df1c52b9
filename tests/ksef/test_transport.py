"""The transport's error mapping and retry rules (issue #4 item 8).

Proxies and outages do not come from the simulator, so these tests put a small scripted HTTP server on
loopback in front of the client: it answers each request with the next scripted reply (HTML 502 pages,
empty 503s, dropped connections, 429 with Retry-After, KSeF's error bodies).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from ksefd.i18n import render
from ksefd.ksef.errors import (
    Forbidden,
    Gone,
    KsefException,
    OutcomeUnknown,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
)
from ksefd.ksef.transport import Response, RetryPolicy, Transport, rate_limit_group
from tests.support.conformance import Violations, conformance_middleware

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=30)


class Upstream:
    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        reply = self.script.pop(0) if self.script else ok()
        return await reply(request)


def ok(body: Any = None, status: int = 200) -> Reply:
    async def reply(_: web.Request) -> web.StreamResponse:
        return web.json_response(body if body is not None else {"ok": True}, status=status)
    return reply


def raw(status: int, text: str, content_type: str = "text/html", headers: dict[str, str] | None = None) -> Reply:
    async def reply(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, content_type=content_type, headers=headers)
    return reply


def drop() -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()          # the answer is lost after the request arrived
        return web.Response(status=200)
    return reply


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    """The scripted server; what the client sends to it under /v2 is checked against openapi.json like
    everything sent to the simulator (its scripted answers are not KSeF's, so they are not checked)."""
    up = Upstream()
    found = Violations()
    app = web.Application(middlewares=[conformance_middleware(found)])
    app.router.add_route("*", "/{tail:.*}", up.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield up, f"http://127.0.0.1:{server.port}/v2"
    await server.close()
    assert found.requests == [], "requests that break openapi.json:\n" + "\n".join(found.requests)


@pytest.fixture
async def make_transport() -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make(base_url: str, **kwargs: Any) -> Transport:
        kwargs.setdefault("retry", FAST)
        transport = Transport(base_url, **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


HTML_502 = "<html><head><style>p{}</style></head><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
SESSION = "20250626-SO-2C3E6C8000-B675CF5D68-07"
BEARER = "test-access-token"
SEND_BODY = {"invoiceHash": base64.b64encode(hashlib.sha256(b"<x/>").digest()).decode(), "invoiceSize": 4,
             "encryptedInvoiceHash": base64.b64encode(hashlib.sha256(bytes(16)).digest()).decode(),
             "encryptedInvoiceSize": 16, "encryptedInvoiceContent": base64.b64encode(bytes(16)).decode(),
             "offlineMode": False}
EXPORT_BODY = {"encryption": {"encryptedSymmetricKey": base64.b64encode(bytes(256)).decode(),
                              "initializationVector": base64.b64encode(bytes(16)).decode()},
               "filters": {"subjectType": "Subject2", "dateRange": {"dateType": "PermanentStorage",
                                                                    "from": "2026-01-01T00:00:00+00:00"}}}


def session_status(transport: Transport, **kwargs: Any) -> Awaitable[Response]:
    return transport.request("GET", "/sessions/{referenceNumber}", params={"referenceNumber": SESSION},
                             bearer=BEARER, **kwargs)


def session_list(transport: Transport) -> Awaitable[Response]:
    return transport.request("GET", "/sessions", query={"sessionType": "Online"}, bearer=BEARER)


def send_invoice(transport: Transport) -> Awaitable[Response]:
    return transport.request("POST", "/sessions/online/{referenceNumber}/invoices",
                             params={"referenceNumber": SESSION}, json=SEND_BODY, bearer=BEARER, replay_safe=False)


def test_path_parameters_are_quoted() -> None:
    transport = Transport("http://127.0.0.1:1/v2")
    assert transport.url("/sessions/{ref}", {"ref": "A B/C"}) == "http://127.0.0.1:1/v2/sessions/A%20B%2FC"
    with pytest.raises(ValueError, match="unfilled placeholder"):
        transport.url("/sessions/{ref}")


async def test_get_retries_html_502_then_succeeds(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(502, HTML_502), ok({"x": 1})]
    sleeps = Sleeps()
    response = await session_status(make_transport(base, sleep=sleeps))
    assert response.json() == {"x": 1}
    assert [s[1] for s in up.seen] == [f"/v2/sessions/{SESSION}"] * 2 and len(sleeps.calls) == 1


async def test_5xx_html_and_empty_bodies_become_server_errors(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(502, HTML_502)] * 3
    with pytest.raises(ServerError) as caught:
        await session_list(make_transport(base, sleep=Sleeps()))
    assert caught.value.status == 502 and caught.value.retryable
    assert "502 Bad Gateway nginx" in str(caught.value) and "<" not in caught.value.excerpt
    up.script = [raw(503, "", "text/plain")] * 3
    with pytest.raises(ServerError, match=r"HTTP 503 \(empty body\)") as caught:
        await session_list(make_transport(base, sleep=Sleeps()))
    assert "kodem HTTP 503 (pusta treść)" in render(caught.value.words, "pl")      # for people, in their words


async def test_invoice_send_is_never_reposted_after_a_lost_answer(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [drop()]
    with pytest.raises(OutcomeUnknown) as caught:
        await send_invoice(make_transport(base, sleep=Sleeps()))
    assert len(up.seen) == 1 and caught.value.retryable
    up.seen.clear()
    up.script = [raw(500, "")]
    with pytest.raises(OutcomeUnknown):
        await send_invoice(make_transport(base, sleep=Sleeps()))
    assert len(up.seen) == 1


async def test_replay_safe_request_is_retried_after_a_lost_answer(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [drop(), ok()]
    await session_status(make_transport(base, sleep=Sleeps()))
    assert len(up.seen) == 2


async def test_refused_connection_is_retried_even_for_sends(make_transport: Any) -> None:
    sleeps = Sleeps()
    transport = make_transport("http://127.0.0.1:1/v2", sleep=sleeps)
    with pytest.raises(TransportError) as caught:
        await send_invoice(transport)
    assert not isinstance(caught.value, OutcomeUnknown)        # nothing was sent
    assert len(sleeps.calls) == FAST.attempts - 1 and "cannot connect" in str(caught.value)


async def test_429_waits_retry_after_then_repeats_even_a_send(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(429, json.dumps({"status": {"code": 429, "description": "Too Many Requests",
                                                 "details": ["invoiceSend"]}}), "application/json",
                     {"Retry-After": "7"}), ok({"referenceNumber": "R"}, 202)]
    sleeps = Sleeps()
    response = await send_invoice(make_transport(base, sleep=sleeps))
    assert response.status == 202 and sleeps.calls == [7.0] and len(up.seen) == 2


async def test_429_is_reported_to_the_gate_which_owns_the_wait(upstream: Any, make_transport: Any) -> None:
    class Gate:
        def __init__(self) -> None:
            self.events: list[tuple[str, ...]] = []

        async def acquire(self, context: str, group: str) -> None:
            self.events.append(("acquire", context, group))

        def ready(self, context: str, group: str) -> bool:
            return True

        def answered(self, grant: object) -> None:
            self.events.append(("answered",))

        async def penalise(self, context: str, group: str, retry_after: float) -> None:
            self.events.append(("penalise", context, group, str(retry_after)))

    up, base = upstream
    up.script = [raw(429, "{}", "application/json", {"Retry-After": "3"}), ok()]
    gate, sleeps = Gate(), Sleeps()
    await make_transport(base, gate=gate, sleep=sleeps).request(
        "GET", "/sessions/{referenceNumber}/invoices", params={"referenceNumber": SESSION}, bearer=BEARER,
        context="Nip:5265877635")
    assert gate.events == [("acquire", "Nip:5265877635", "sessionInvoiceList"),
                           ("penalise", "Nip:5265877635", "sessionInvoiceList", "3.0"),
                           ("acquire", "Nip:5265877635", "sessionInvoiceList")]
    assert sleeps.calls == []


async def test_long_retry_after_is_raised_for_the_caller_to_schedule(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(429, "", "text/plain", {"Retry-After": "600"})]
    with pytest.raises(RateLimited) as caught:
        await make_transport(base, sleep=Sleeps()).request("POST", "/invoices/exports", json=EXPORT_BODY,
                                                           bearer=BEARER)
    assert caught.value.retry_after == 600 and caught.value.group == "invoiceExport"
    assert str(caught.value) == "KSeF rate limit reached for invoiceExport; retry after 600 s"
    assert render(caught.value.words, "pl") == "osiągnięto limit zapytań KSeF dla invoiceExport; ponowienie za 600 s"


async def test_ksef_error_bodies_are_parsed(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    exception = {"exception": {"exceptionDetailList": [
        {"exceptionCode": 21405, "exceptionDescription": "Błąd walidacji danych wejściowych.",
         "details": ["pageSize: za duży"]}], "serviceCode": "x", "timestamp": "2025-07-11T12:23:56.0154302+00:00"}}
    problem = {"title": "Bad Request", "status": 400, "instance": "/v2/x", "detail": "d",
               "errors": [{"code": 21470, "description": "Klucz", "details": []},
                          {"code": 21405, "description": "Walidacja", "details": ["a"]}],
               "timestamp": "2025-07-11T12:23:56Z", "traceId": "t"}
    forbidden = {"title": "Forbidden", "status": 403, "detail": "Brak uprawnień", "reasonCode": "missing-permissions",
                 "security": {"requiredAnyOfPermissions": ["InvoiceWrite"], "presentPermissions": []}}
    up.script = [ok(exception, 400), ok(problem, 400), raw(401, json.dumps({"title": "Unauthorized", "status": 401,
                 "detail": "Token wygasł.", "timestamp": "2025-07-11T12:23:56Z"}), "application/problem+json"),
                 raw(403, json.dumps(forbidden), "application/problem+json"),
                 raw(410, json.dumps({"title": "Gone", "status": 410, "detail": "wygasła"}),
                     "application/problem+json"),
                 raw(400, "<html>bad</html>")]
    transport = make_transport(base, sleep=Sleeps())
    with pytest.raises(KsefException) as first:
        await session_list(transport)
    assert first.value.code == 21405 and first.value.details == ["pageSize: za duży"] and not first.value.retryable
    with pytest.raises(KsefException) as second:
        await session_list(transport)
    assert second.value.codes == [21470, 21405] and second.value.retryable
    with pytest.raises(Unauthorized, match="Token wygasł"):
        await session_list(transport)
    with pytest.raises(Forbidden) as third:       # no timestamp: accepted (PROTOCOL.md §14.2)
        await session_list(transport)
    assert third.value.required_permissions == ["InvoiceWrite"] and "the credentials hold none" in str(third.value)
    with pytest.raises(Gone):
        await session_list(transport)
    with pytest.raises(KsefException, match="Bad Request: bad"):
        await session_list(transport)


async def test_bearer_goes_only_to_the_api_and_is_never_logged(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(502, HTML_502), ok(), ok()]
    transport = make_transport(base, sleep=Sleeps())
    with structlog.testing.capture_logs() as logs:
        await transport.request("GET", "/sessions", query={"sessionType": "Online"}, bearer="SECRET-ACCESS-TOKEN")
        await transport.presigned("GET", base.replace("/v2", "/storage/x?sig=SECRET-SIG"))
    assert up.seen[0][2]["Authorization"] == "Bearer SECRET-ACCESS-TOKEN"
    assert "Authorization" not in up.seen[2][2]
    assert "SECRET" not in repr(logs)


@pytest.mark.parametrize(("method", "template", "group"), [
    ("POST", "/sessions/online", "onlineSession"),
    ("POST", "/sessions/online/{referenceNumber}/close", "onlineSessionClose"),
    ("POST", "/sessions/online/{ref}/invoices", "invoiceSend"),
    ("POST", "/sessions/batch", "batchSession"),
    ("POST", "/sessions/batch/{referenceNumber}/close", "batchSessionClose"),
    ("GET", "/sessions/{referenceNumber}/invoices/{invoiceReferenceNumber}", "invoiceStatus"),
    ("GET", "/sessions", "sessionList"),
    ("GET", "/sessions/{referenceNumber}/invoices", "sessionInvoiceList"),
    ("GET", "/sessions/{referenceNumber}/invoices/failed", "sessionInvoiceList"),
    ("GET", "/sessions/{referenceNumber}", "sessionMisc"),
    ("GET", "/sessions/{referenceNumber}/invoices/{invoiceReferenceNumber}/upo", "sessionMisc"),
    ("GET", "/sessions/{referenceNumber}/invoices/ksef/{ksefNumber}/upo", "sessionMisc"),
    ("GET", "/sessions/{referenceNumber}/upo/{upoReferenceNumber}", "sessionMisc"),
    ("POST", "/invoices/query/metadata", "invoiceMetadata"),
    ("POST", "/invoices/exports", "invoiceExport"),
    ("GET", "/invoices/exports/{referenceNumber}", "invoiceExportStatus"),
    ("GET", "/invoices/ksef/{ksefNumber}", "invoiceDownload"),
    ("POST", "/auth/challenge", "anonymous"),
    ("GET", "/auth/{referenceNumber}", "anonymous"),
    ("POST", "/auth/token/refresh", "anonymous"),
    ("GET", "/security/public-key-certificates", "anonymous"),
    ("POST", "/testdata/person", "anonymous"),
    ("POST", "/collective-identifiers/query", "collectiveIdentifier"),
    ("GET", "/auth/sessions", "other"),
    ("POST", "/tokens", "other"),
    ("GET", "/rate-limits", "other"),
    ("POST", "/testdata/rate-limits", "other"),
])
def test_rate_limit_groups(method: str, template: str, group: str) -> None:
    assert rate_limit_group(method, template) == group


async def test_header_names_are_case_insensitive(upstream: Any, make_transport: Any) -> None:
    up, base = upstream
    up.script = [raw(429, "", "text/plain", {"retry-after": "5"}), ok()]
    sleeps = Sleeps()
    response = await session_list(make_transport(base, sleep=sleeps))
    assert sleeps.calls == [5.0]
    assert response.headers.get("content-type") == response.headers.get("Content-Type")
    assert response.headers.get("content-type") == "application/json; charset=utf-8"


async def test_a_block_that_begins_while_the_token_is_fetched_holds_the_request_back(
        upstream: Any, make_transport: Any) -> None:
    """Issue #10: the limiter let the request through, then (while the access token was being fetched) a sibling
    got a 429; the request must wait for the block's end, never reach KSeF during it (it would lengthen it)."""
    from ksefd.ksef.ratelimit import RateLimiter
    from tests.ksef.virtual_time import VirtualClock

    up, base = upstream
    clock = VirtualClock()
    limiter = RateLimiter(now=clock.now, sleep=clock.sleep)
    arrived: list[float] = []

    async def answer(_: web.Request) -> web.StreamResponse:
        arrived.append(clock.now())
        return web.json_response({"ok": True})

    up.script = [answer]
    fetches = 0

    async def token() -> str:
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            await limiter.penalise("Nip:5265877635", "invoiceSend", 30.0)    # a sibling's 429 meanwhile
        return BEARER

    transport = make_transport(base, gate=limiter, sleep=clock.sleep)
    start = clock.now()
    await clock.drive(transport.request("GET", "/sessions", query={"sessionType": "Online"}, bearer=token,
                                        context="Nip:5265877635"))
    assert fetches == 2 and len(arrived) == 1 and arrived[0] - start >= 30.0
