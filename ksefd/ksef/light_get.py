"""Plain HTTP/1.1 GETs of small bodies over kept-alive connections: the UPO downloads of a backlog (issue #16).

A backlog fetches one UPO per invoice from a pre-signed URL (PROTOCOL.md §4.6: no token, not rate limited).
Through aiohttp each cost ~3x the CPU of the request itself (URL objects, timers, response and stream objects,
header dictionaries): about a fifth of the daemon's CPU on a 10 000-invoice backlog. This client does only what
such a GET needs: the URL sent exactly as KSeF gave it (a signature is never re-encoded), `Content-Length` or
chunked bodies, connections kept per scheme, host and port and reused while idle for less than IDLE_SECONDS.
Anything unusual (a redirect, a body larger than MAX_BODY) is answered as it came, for the caller's checks.

Failures map as in transport.py: a connection that cannot be opened is `NotSent`; anything after the request
left is `MaybeSent` (a GET is replay-safe: the transport retries it). A kept-alive connection the server had
closed meanwhile fails before any answer byte: the request is sent once more on a fresh connection here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .responses import Response

IDLE_SECONDS = 4.0              # reuse a connection idle for less (inside common servers' keep-alive timeouts)
MAX_BODY = 64 * 1024 * 1024     # a UPO is a few kB
CONNECT_SECONDS = 15.0
_Key = tuple[str, str, int]
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class NotSent(Exception):
    """No connection: nothing reached the server."""


class MaybeSent(Exception):
    """The request may have reached the server (reset, timeout, a malformed answer)."""


class LightGet:
    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self._idle: dict[_Key, list[tuple[float, _Conn]]] = {}
        self._tls: ssl.SSLContext | None = None
        self.opened = 0                 # connections opened so far (tests, and a look at reuse)

    async def get(self, url: str, seconds: float) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotSent(f"not an http(s) URL: {parts.scheme!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {self.user_agent}\r\n"
                   "Accept-Encoding: identity\r\n\r\n").encode("latin-1")
        try:
            async with asyncio.timeout(seconds):
                conn = self._take(key)
                if conn is not None:
                    try:
                        return await self._exchange(key, conn, request, reused=True)
                    except _Stale:
                        pass                  # closed by the server while idle: once more on a fresh one
                return await self._exchange(key, await self._open(key), request, reused=False)
        except TimeoutError as exc:
            raise MaybeSent("timed out") from exc

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for _, (_, writer) in conns:
                writer.close()

    # --- internals ------------------------------------------------------------------------------------

    def _take(self, key: _Key) -> _Conn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            since, conn = conns.pop()
            if now - since < IDLE_SECONDS and not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    async def _open(self, key: _Key) -> _Conn:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                conn = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        except (OSError, TimeoutError) as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from exc
        self.opened += 1
        return conn

    async def _exchange(self, key: _Key, conn: _Conn, request: bytes, *, reused: bool) -> Response:
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            if reused and (isinstance(exc, ConnectionResetError | BrokenPipeError)
                           or (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)):
                raise _Stale from exc          # not a byte of an answer: the server closed it while idle
            raise MaybeSent(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:       # cancelled or timed out: the connection cannot be reused
            writer.close()
            raise
        try:
            status, version, headers = _head(head)
            body, keep = await _body(reader, headers, status)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            raise MaybeSent(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        if keep and version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower():
            self._idle.setdefault(key, []).append((time.monotonic(), conn))
        else:
            writer.close()
        content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        return Response(status, headers, body, content_type)


class _Stale(Exception):
    pass


def _head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:40]!r}")
    status = int(rest[:3])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"a malformed header line: {line[:40]!r}")
            headers.add(name.strip(), value.strip())
    return status, version, headers


async def _body(reader: asyncio.StreamReader, headers: CIMultiDict[str], status: int) -> tuple[bytes, bool]:
    """The body and whether the connection may carry another request."""
    if status in (204, 304) or 100 <= status < 200:
        return b"", True
    pieces: list[bytes] = []
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            length = int(line.split(b";", 1)[0].strip(), 16)
            if length == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":     # trailers, then the blank line
                    pass
                return b"".join(pieces), True
            size += length
            if size > MAX_BODY:
                raise ValueError("the answer is larger than expected")
            pieces.append(await reader.readexactly(length))
            await reader.readexactly(2)
    length_text = headers.get("Content-Length")
    if length_text is not None:
        length = int(length_text)
        if length < 0 or length > MAX_BODY:
            raise ValueError(f"an answer of {length} bytes")
        return await reader.readexactly(length), True
    size = 0
    while piece := await reader.read(65536):        # until the server closes (HTTP/1.0 style)
        size += len(piece)
        if size > MAX_BODY:
            raise ValueError("the answer is larger than expected")
        pieces.append(piece)
    return b"".join(pieces), False
