"""KSeF's answers: `Response` (status, case-insensitive headers, body, JSON/msgspec decoding) and the mapping
of error answers to the typed hierarchy of errors.py (PROTOCOL.md §10.1, §14.2):

400 ExceptionResponse or problem+json -> KsefException; 401 Unauthorized; 403 Forbidden (reasonCode, security,
timestamp optional); 410 Gone; 429 RateLimited (Retry-After); 5xx ServerError, also for HTML or empty bodies
from proxies; anything else ApiError.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from .errors import (
    UNREADABLE_BODY,
    ApiError,
    ExceptionDetail,
    Forbidden,
    Gone,
    KsefException,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
    UnreadableRequest,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]        # case-insensitive for answers from the network (HTTP/2 lowercases names)
    body: bytes
    content_type: str = ""

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"KSeF answered HTTP {self.status} with a body that is not JSON "
                                f"({excerpt(self.body, self.content_type)!r})") from exc

    def decode(self, kind: type[T]) -> T:
        """The body as a msgspec struct (unknown fields ignored, CHG 2.1.2)."""
        try:
            return msgspec.json.decode(self.body, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(f"KSeF's answer does not fit {kind.__name__}: {exc}") from exc


_TAGS = re.compile(r"<(script|style)[^>]*>.*?</\1>|<[^>]+>", re.S | re.I)


def excerpt(body: bytes, content_type: str = "", limit: int = 200) -> str:
    """A short, single-line, tag-free text of a response body (HTML error pages from proxies included)."""
    text = body[:4000].decode("utf-8", "replace")
    if "html" in content_type or text.lstrip().startswith("<"):
        text = _TAGS.sub(" ", text)
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Retry-After is seconds in KSeF (PROTOCOL.md §1); an HTTP date is accepted too."""
    if not value:
        return default
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        return max(0.0, when.timestamp() - time.time())


def _json_or_none(response: Response) -> Any:
    if not response.body.strip():
        return None
    try:
        return msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        return None


def _exception_details(data: Any) -> list[ExceptionDetail]:
    """Both 400 shapes: ExceptionResponse.exception.exceptionDetailList and problem+json `errors` (§10.1)."""
    found: list[ExceptionDetail] = []
    if not isinstance(data, dict):
        return found
    exception = data.get("exception")
    items = exception.get("exceptionDetailList") if isinstance(exception, dict) else data.get("errors")
    for item in items or []:
        if not isinstance(item, dict):
            continue
        code = item.get("exceptionCode", item.get("code", 0))
        description = item.get("exceptionDescription", item.get("description")) or ""
        details = [str(d) for d in item.get("details") or []]
        found.append(ExceptionDetail(int(code) if isinstance(code, int | str) and str(code).isdigit() else 0,
                                     str(description), details))
    return found


def error_from_response(response: Response, method: str, template: str, group: str = "", context: str = ""
                        ) -> Exception:
    """Map an HTTP error answer to the typed hierarchy of errors.py."""
    status = response.status
    data = _json_or_none(response)
    fields = data if isinstance(data, dict) else {}
    detail = str(fields.get("detail") or fields.get("title") or excerpt(response.body, response.content_type)
                 or f"HTTP {status}")
    if status == 429:
        status_obj = fields.get("status")
        listed = status_obj.get("details") if isinstance(status_obj, dict) else None
        details = [str(d) for d in listed or []] or ([str(fields["detail"])] if fields.get("detail") else [])
        return RateLimited(retry_after_seconds(response.headers.get("Retry-After")), group=group, context=context,
                           details=details)
    if status >= 500:
        return ServerError(status, excerpt(response.body, response.content_type), method=method, url=template)
    if status == 400:
        errors = _exception_details(data)
        if not errors:
            errors = [ExceptionDetail(0, f"Bad Request: {excerpt(response.body, response.content_type)}")]
        if any(e.code == UNREADABLE_BODY for e in errors):
            return UnreadableRequest(errors, method=method, url=template)
        return KsefException(errors, method=method, url=template)
    if status == 401:
        return Unauthorized(401, detail, method=method, url=template)
    if status == 403:
        security = fields.get("security")
        return Forbidden(detail, str(fields.get("reasonCode") or ""), security if isinstance(security, dict) else None,
                         method=method, url=template)
    if status == 410:
        return Gone(410, detail, method=method, url=template)
    return ApiError(status, detail, method=method, url=template)
