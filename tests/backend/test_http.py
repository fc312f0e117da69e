"""The shared transport's request bodies, against a real TLS server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from engine.backend._http import attempt, open_session
from engine.backend.governor import RateGovernor


@dataclass
class Received:
    """What the server was sent, one entry per request."""

    bodies: list[bytes] = field(default_factory=list)
    lengths: list[str | None] = field(default_factory=list)
    encodings: list[str | None] = field(default_factory=list)
    types: list[str | None] = field(default_factory=list)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[URL, Path, Received]]:
    """An https echo of request bodies on 127.0.0.1, its CA file, and what it received."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    received = Received()

    async def handle(request: web.Request) -> web.Response:
        received.bodies.append(await request.read())
        received.lengths.append(request.headers.get("Content-Length"))
        received.encodings.append(request.headers.get("Transfer-Encoding"))
        received.types.append(request.headers.get("Content-Type"))
        return web.Response(status=201, text="ok")

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/upload", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield URL(f"https://127.0.0.1:{port}/upload"), ca_file, received
    finally:
        await runner.cleanup()


def _chunk_spy(sizes: list[int]) -> aiohttp.TraceConfig:
    """A trace that records the size of each piece of request body handed to the connection."""

    async def on_chunk(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        sizes.append(len(params.chunk))

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    trace.freeze()
    return trace


async def _post(
    session: aiohttp.ClientSession, url: URL, ca_file: Path, body: bytes, content_type: str | None
) -> int:
    """One `attempt` of a POST of `body`; the answer's status."""
    answer = await attempt(
        session,
        RateGovernor(rate=None),
        "POST",
        url,
        data=body,
        headers={"Content-Type": content_type} if content_type else None,
        max_bytes=1 << 20,
        ca_file=ca_file,
    )
    return answer.status


@pytest.mark.parametrize("size", [10, 1 << 18, 3_000_001])
async def test_a_body_arrives_whole_with_its_length_and_reaches_the_connection_in_256_kib_pieces(
    server: tuple[URL, Path, Received], size: int
) -> None:
    """A body of any size is received byte for byte, with its Content-Length (never chunked
    on the wire), its Content-Type kept, and no write to the connection over 256 KiB."""
    url, ca_file, received = server
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sizes: list[int] = []
    session = open_session(ca_file=ca_file, timeout=30, headers={})
    session.trace_configs.append(_chunk_spy(sizes))
    async with session:
        assert await _post(session, url, ca_file, body, "application/json") == 201
    assert received.bodies == [body]
    assert received.lengths == [str(size)]
    assert received.encodings == [None]
    assert received.types == ["application/json"]
    assert sum(sizes) == size
    assert max(sizes) <= 1 << 18


async def test_a_large_body_is_sent_from_its_start_on_every_attempt(
    server: tuple[URL, Path, Received],
) -> None:
    """The same large body given to two attempts (a retry) arrives whole both times."""
    url, ca_file, received = server
    body = b"0123456789abcdef" * 50_000
    async with open_session(ca_file=ca_file, timeout=30, headers={}) as session:
        for _ in range(2):
            assert await _post(session, url, ca_file, body, None) == 201
    assert received.bodies == [body, body]
