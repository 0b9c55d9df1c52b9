"""Checks every request and response that passes through a simulator under test against the
official openapi.json, with openapi-core (issue #2: every JSON response validates; issue #4: every
request the client sends validates). Written for the tests; shares nothing with the simulator."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "ksef" / "openapi.json"
SPEC_HOST = "https://api-test.ksef.mf.gov.pl"


@functools.cache
def openapi() -> OpenAPI:
    # The reference copy in ../shared, not the package's copy: the simulator is checked against the spec.
    path = SPEC_PATH if SPEC_PATH.exists() else Path(__file__).resolve().parents[2] / "ksefd/data/spec/openapi.json"
    # The spec types the XML body of POST /auth/xades-signature as `type: string`; openapi-core's default XML
    # deserializer turns it into an Element (and needs bytes), so XML bodies are checked as text.
    # application/problem+json (401/403/410 and problem-details 400/429) is JSON too; openapi-core 0.23 only
    # knows application/json and would check the raw bytes against `type: object`.
    config = Config(extra_media_type_deserializers={"application/xml": _xml_as_text,
                                                    "application/problem+json": _json_loads})
    return OpenAPI.from_dict(json.loads(path.read_text("utf-8")), config=config)


def _json_loads(value: bytes | str, **parameters: str) -> object:
    return json.loads(value)


def _xml_as_text(value: bytes | str, **parameters: str) -> str:
    return value.decode(parameters.get("charset", "utf-8"), "replace") if isinstance(value, bytes) else value


@dataclass
class Violations:
    requests: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    checked_responses: int = 0


def _mock_request(request: web.Request, body: bytes) -> MockRequest:
    return MockRequest(SPEC_HOST, request.method.lower(), request.path,
                       args=dict(request.query), headers=dict(request.headers),
                       cookies={}, data=body.decode("utf-8", "replace") if body else None,
                       content_type=request.content_type if body else None)


def _safe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:   # openapi-core's errors about a body that is not JSON fail their own __str__
        return "(no message)"


def _error_text(exc: Exception) -> str:
    cause = exc.__cause__
    return f"{type(exc).__name__}: {_safe(exc)}" + (f" <- {type(cause).__name__}: {_safe(cause)}"[:2000]
                                                     if cause else "")


def conformance_middleware(found: Violations) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not request.path.startswith("/v2/"):
            return await handler(request)       # pre-signed storage URLs and /sim controls are not in the spec
        body = await request.read()
        mock = _mock_request(request, body)
        try:
            openapi().validate_request(mock)
        except Exception as exc:   # any validation failure is recorded
            found.requests.append(f"{request.method} {request.path}: {_error_text(exc)}")
        response = await handler(request)
        if "X-Sim-Fault" in response.headers:
            return response     # an injected fault (ksefd/sim/faults.py): a CDN's 5xx is not a KSeF answer
        if isinstance(response, web.Response) and response.body is not None:
            content_type = response.content_type
            if content_type.endswith("json") or response.status >= 400:
                raw = response.body if isinstance(response.body, bytes) else b""
                try:
                    openapi().validate_response(mock, MockResponse(raw, status_code=response.status,
                                                                   content_type=content_type,
                                                                   headers=dict(response.headers)))
                    found.checked_responses += 1
                except Exception as exc:
                    found.responses.append(f"{request.method} {request.path} -> {response.status}: "
                                           f"{_error_text(exc)}")
        return response

    return check
