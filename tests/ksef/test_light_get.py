"""UPO downloads through light_get.py (issue #16): exact bytes, kept-alive connections, a connection the server
closed while idle, chunked and close-delimited bodies, and the transport's failures and retries."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ksefd.ksef.errors import TransportError
from ksefd.ksef.light_get import LightGet, MaybeSent
from ksefd.ksef.transport import RetryPolicy, Transport

UPO = b"<?xml version='1.0'?><Potwierdzenie>" + b"x" * 3000 + b"</Potwierdzenie>"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []          # the raw request targets, as the server received them

    async def fixed(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(body=UPO, content_type="application/xml")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(UPO), 700):
            await response.write(UPO[start:start + 700])
        await response.write_eof()
        return response

    async def closing(request: web.Request) -> web.Response:
        return web.Response(body=UPO, headers={"Connection": "close"})

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, body=b"<Error>BlobNotFound</Error>", content_type="application/xml")

    app = web.Application()
    app.router.add_get("/upo/{n}", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/closing", closing)
    app.router.add_get("/gone", gone)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield f"http://127.0.0.1:{test_server.port}", seen
    await test_server.close()


async def test_many_upos_over_one_kept_alive_connection_the_url_sent_as_given(server: tuple[str, list[str]]) -> None:
    base, seen = server
    client = LightGet("ksefd-test")
    try:
        signed = "/upo/1?sv=2025-01-01&sig=a%2Bb%2F%3D&se=2026-12-07T10%3A00%3A00Z"
        answers = [await client.get(f"{base}{signed}", 10) for _ in range(20)]
        assert {a.body for a in answers} == {UPO} and {a.status for a in answers} == {200}
        assert answers[0].content_type == "application/xml" and answers[0].headers["content-type"].startswith(
            "application/xml")
        assert client.opened == 1
        assert set(seen) == {signed}          # the signature is not re-encoded on the way
        eight = await asyncio.gather(*(client.get(f"{base}/upo/{n}", 10) for n in range(8)))
        assert {a.body for a in eight} == {UPO} and client.opened <= 8
    finally:
        await client.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_failure() -> None:
    """A server that keeps no connection idle (it answers as for keep-alive, then closes): the next GET goes
    on a fresh connection, whether the close was already seen or is met by the request."""
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(UPO), UPO))
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{raw.sockets[0].getsockname()[1]}"
    client = LightGet("ksefd-test")
    try:
        assert (await client.get(f"{base}/upo/1", 10)).body == UPO
        assert (await client.get(f"{base}/upo/2", 10)).body == UPO       # at once: the close may not be seen yet
        await asyncio.sleep(0.1)
        assert (await client.get(f"{base}/upo/3", 10)).body == UPO
        assert client.opened == 3
    finally:
        await client.close()
        raw.close()
        await raw.wait_closed()


async def test_chunked_close_delimited_and_error_bodies(server: tuple[str, list[str]]) -> None:
    base, _ = server
    client = LightGet("ksefd-test")
    try:
        assert (await client.get(f"{base}/chunked", 10)).body == UPO
        assert (await client.get(f"{base}/closing", 10)).body == UPO
        assert (await client.get(f"{base}/chunked", 10)).body == UPO
        missing = await client.get(f"{base}/gone", 10)
        assert missing.status == 404 and b"BlobNotFound" in missing.body
    finally:
        await client.close()


async def test_a_server_that_never_answers_times_out_as_maybe_sent() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = LightGet("ksefd-test")
    try:
        with pytest.raises(MaybeSent):
            await client.get(f"http://127.0.0.1:{listener.getsockname()[1]}/upo", 0.3)
    finally:
        await client.close()
        listener.close()


async def test_the_transport_retries_then_raises_a_transport_error_when_nothing_listens() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    transport = Transport("http://127.0.0.1:1/v2", retry=RetryPolicy(attempts=3), sleep=sleep)
    try:
        with pytest.raises(TransportError):
            await transport.presigned_get(f"http://127.0.0.1:{port}/upo?sig=secret")
        assert len(slept) == 2
    finally:
        await transport.close()


async def test_the_transport_answers_a_upo_through_the_light_client(server: tuple[str, list[str]]) -> None:
    base, _ = server
    transport = Transport("http://127.0.0.1:1/v2")
    seen: list[Any] = []
    transport.observers.append(seen.append)
    try:
        response = await transport.presigned_get(f"{base}/upo/7?sig=x")
        assert response.status == 200 and response.body == UPO
        assert transport._light is not None and transport._light.opened == 1
        assert [e.status for e in seen] == [200]
    finally:
        await transport.close()
