"""Latarnia, KSeF's public status service (PROTOCOL.md §1): `GET /status` and `GET /messages`, no auth.

Not in ksef-docs; the shapes are the C# client's (`LighthouseClient.cs`, `Models/Lighthouse/*`):
status is AVAILABLE | MAINTENANCE | FAILURE | TOTAL_FAILURE; a message has id, eventId, category
(FAILURE | TOTAL_FAILURE | MAINTENANCE), type (FAILURE_START | FAILURE_END | MAINTENANCE_ANNOUNCEMENT),
title, text, start, end, version and published. Unknown fields are ignored; a message this client cannot
read is skipped rather than failing the whole answer (the service is informational).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ksefd.i18n import N_

from .environments import ENVIRONMENTS
from .errors import KsefError
from .texts import said

STATUSES = ("AVAILABLE", "MAINTENANCE", "FAILURE", "TOTAL_FAILURE")
TIMEOUT = aiohttp.ClientTimeout(total=15)


class LatarniaUnavailable(KsefError):
    """Latarnia did not answer usefully (unreachable, 403, not JSON). Not a KSeF outage by itself."""

    retryable = True


@dataclass(frozen=True)
class Message:
    id: str
    event_id: int | None
    category: str
    type: str
    title: str
    text: str
    start: dt.datetime | None
    end: dt.datetime | None
    version: int | None
    published: dt.datetime | None


@dataclass(frozen=True)
class LatarniaStatus:
    status: str                 # one of STATUSES
    messages: list[Message]


def default_url(environment: str, base_url: str | None) -> str:
    """The Latarnia to ask: the environment's official one; with a custom base URL (the simulator, a proxy),
    the base URL's origin, where `ksefd sim` serves it. An unreachable or refusing Latarnia is harmless."""
    if base_url:
        parts = urlsplit(base_url)
        return f"{parts.scheme}://{parts.netloc}"
    known = ENVIRONMENTS.get(environment)
    return known.status_url if known is not None else ""


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_message(item: Any) -> Message | None:
    if not isinstance(item, dict) or not item.get("type") or item.get("id") is None:
        return None
    event = item.get("eventId")
    version = item.get("version")
    return Message(str(item["id"]), event if isinstance(event, int) else None, str(item.get("category") or ""),
                   str(item["type"]), str(item.get("title") or ""), str(item.get("text") or ""),
                   _time(item.get("start")), _time(item.get("end")), version if isinstance(version, int) else None,
                   _time(item.get("published")))


class LatarniaClient:
    def __init__(self, url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._own = session is None

    async def _get(self, path: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        try:
            async with self._session.get(self.url + path, timeout=TIMEOUT) as response:
                if response.status != 200:
                    raise LatarniaUnavailable(said(N_("Latarnia {url} answered HTTP {status}"), url=self.url + path,
                                                   status=str(response.status)))
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LatarniaUnavailable(said(N_("Latarnia {url} cannot be read: {error}"), url=self.url + path,
                                           error=f"{type(exc).__name__}: {exc}")) from None

    async def status(self) -> LatarniaStatus:
        body = await self._get("/status")
        status = body.get("status") if isinstance(body, dict) else None
        if status not in STATUSES:
            raise LatarniaUnavailable(said(N_("Latarnia {url} gave an unknown status {status}"),
                                           url=f"{self.url}/status", status=repr(status)))
        raw = body.get("messages") if isinstance(body.get("messages"), list) else []
        return LatarniaStatus(str(status), [m for m in map(parse_message, raw) if m is not None])

    async def messages(self) -> list[Message]:
        body = await self._get("/messages")
        if not isinstance(body, list):
            raise LatarniaUnavailable(said(N_("Latarnia {url} did not give a list"), url=f"{self.url}/messages"))
        return [m for m in map(parse_message, body) if m is not None]

    async def reachable(self, url: str) -> bool:
        """Does KSeF answer at all? A GET of a public endpoint (e.g. `/security/public-key-certificates`):
        used while the daemon sees KSeF unreachable and no outage is announced, to notice its return."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        try:
            async with self._session.get(url, timeout=TIMEOUT) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None
